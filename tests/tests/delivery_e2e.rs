//! End-to-end delivery tests (SPEC §4, §5): the real `fanout` binary, two
//! simulated clusters sending remote-write 1.0, and fanout-load's verifying
//! sinks in this process as export targets, all on 127.0.0.1.
//!
//! - `routing_labels_headers_and_auth`: auto-linked, restricted, excluded,
//!   overridden, shared and hybrid exports; every sample arrives once at
//!   exactly the right targets with the right labels, headers and auth;
//!   foreign, unattributed and filtered series are counted, not delivered.
//! - `failing_targets_do_not_hurt_healthy_ones`: 503 for a while, down, slow
//!   and 400 targets next to a healthy one.
//! - `config_change_while_traffic_flows`: an export's endpoint changes under
//!   load; the unchanged target loses nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_loadtest::identity::{now_ms, SampleId, SeriesId};
use fanout_loadtest::sink::{ExpectedAuth, Fault, Sink, SinkConfig, SinkHandle, SinkReport};
use fanout_loadtest::verify::Expectation;
use fanout_proto::v1;
use fanout_tests::fanout::{free_port, Gateway};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const TOKEN_A: &str = "e2e-ingest-token-a";
const TOKEN_B: &str = "e2e-ingest-token-b";

/// A series a test sends: its identity and its labels as sent.
#[derive(Clone)]
struct Sent {
    id: SeriesId,
    labels: Vec<(String, String)>,
}

fn series(cluster: u32, index: u32, labels: &[(&str, &str)]) -> Sent {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    Sent {
        id: SeriesId {
            cluster,
            series: index,
        },
        labels,
    }
}

fn body(series: &[Sent], seq: u32) -> Bytes {
    let ts = now_ms();
    let req = v1::WriteRequest {
        timeseries: series
            .iter()
            .map(|s| v1::TimeSeries {
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| v1::Label {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                samples: vec![v1::Sample {
                    value: SampleId { id: s.id, seq }.to_value(),
                    timestamp: ts,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Bytes::from(fanout_proto::snappy::compress(
        &prost::Message::encode_to_vec(&req),
    ))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POSTs one write; returns the status and how long it took.
async fn write(client: &HttpClient, ingest: &str, token: &str, body: Bytes) -> (u16, Duration) {
    let req = fanout_tests::rounds::write_request(ingest, token, body, false);
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("ingest answers within 10s")
        .expect("ingest reachable");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (status, t0.elapsed())
}

async fn sink(name: &str, auth: Option<ExpectedAuth>, headers: &[(&str, &str)]) -> SinkHandle {
    sink_on(
        name,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        auth,
        headers,
        Fault::default(),
    )
    .await
}

async fn sink_on(
    name: &str,
    listen: SocketAddr,
    auth: Option<ExpectedAuth>,
    headers: &[(&str, &str)],
    fault: Fault,
) -> SinkHandle {
    Sink::start(SinkConfig {
        name: name.to_owned(),
        listen,
        auth,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fault,
        ..SinkConfig::default()
    })
    .await
    .expect("sink starts")
}

fn reports(sinks: &[&SinkHandle]) -> Vec<SinkReport> {
    sinks.iter().map(|s| s.report()).collect()
}

/// Waits until `expected` holds over `sinks` (or `timeout`), then asserts it.
async fn await_expectation(
    expected: &Expectation,
    sinks: &[&SinkHandle],
    timeout: Duration,
    gw: &Gateway,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let problems = expected.check(&reports(sinks));
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let shown: Vec<String> = problems.iter().take(20).map(|p| format!("{p:?}")).collect();
            panic!(
                "{} delivery problems, first ones:\n{}\nstats: {}\nlog tail:\n{}",
                problems.len(),
                shown.join("\n"),
                gw.request("GET", "/api/v1/stats", None).1,
                tail(&gw.log(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stats(gw: &Gateway) -> serde_json::Value {
    let (status, body) = gw.request("GET", "/api/v1/stats", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// Stats once `ready` holds (the gateway counts a batch after the target's
/// answer, which a sink records first), or the last ones after 5 s.
async fn stats_when(gw: &Gateway, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats(gw);
        if ready(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn target_by_endpoint<'a>(stats: &'a serde_json::Value, url: &str) -> &'a serde_json::Value {
    stats["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["endpoint"] == url)
        .unwrap_or_else(|| panic!("no target {url} in {stats}"))
}

const CLUSTERS: &str = "clusters:
  - {id: cl-a, organizationId: org-cl-a, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: e2e-ingest-token-a}
  - {id: cl-b, organizationId: org-cl-b, cloudProvider: gcp, cloudRegion: europe-west1, ingestToken: e2e-ingest-token-b}
workspaces:
  - {id: ws-1, organizationId: org-w1, name: one}
  - {id: ws-2, organizationId: org-w2, name: two}
";

/// The registry labels every series of a Deployment gets.
fn meta(dep: &str) -> Vec<(String, String)> {
    let (cluster, ns, ws) = match dep {
        "d1" => ("a", "ns-1", "ws-1"),
        "d2" => ("a", "ns-2", "ws-1"),
        "d3" => ("b", "ns-3", "ws-1"),
        "d4" => ("b", "ns-4", "ws-2"),
        other => panic!("{other}"),
    };
    let (provider, region) = if cluster == "a" {
        ("aws", "us-east-1")
    } else {
        ("gcp", "europe-west1")
    };
    [
        ("cloud_provider", provider),
        ("cloud_region", region),
        ("cluster_organization_id", &format!("org-cl-{cluster}")),
        ("deploymentId", dep),
        ("namespace", ns),
        (
            "organizationId",
            if ws == "ws-1" { "org-w1" } else { "org-w2" },
        ),
        ("workspaceId", ws),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routing_labels_headers_and_auth() {
    // Sinks: A bearer (auto-linked + a Deployment export with the same
    // identity), B basic + header (restricted), C (auto-linked, override
    // target of none), D (override endpoint of C's export for d3), E (hybrid's
    // own export), F (Workspace export of the hybrid's Workspace: gets nothing).
    let a = sink("A", Some(ExpectedAuth::Bearer("sink-a-token".into())), &[]).await;
    let b = sink(
        "B",
        Some(ExpectedAuth::Basic {
            user: "bob".into(),
            password: "sink-b-password".into(),
        }),
        &[("x-scope-orgid", "team-b")],
    )
    .await;
    let c = sink("C", None, &[]).await;
    let d = sink("D", None, &[("x-debug", "1")]).await;
    let e = sink("E", None, &[]).await;
    let f = sink("F", None, &[]).await;

    let registry = format!(
        "{CLUSTERS}deployments:
  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED, name: d1}}
  - {{id: d2, workspaceId: ws-1, clusterId: cl-a, namespace: ns-2, type: HOSTED, name: d2}}
  - {{id: d3, workspaceId: ws-1, clusterId: cl-b, namespace: ns-3, type: HOSTED, name: d3}}
  - {{id: d4, workspaceId: ws-2, clusterId: cl-b, namespace: ns-4, type: HYBRID, name: d4}}
metricsExports:
  - id: e-auto
    objectKey: e_auto
    scope: WORKSPACE
    scopeEntityId: ws-1
    autoLinkDeployments: true
    excludeLinks: [{{scope: DEPLOYMENT, scopeEntityId: d2}}]
    metricsExport: {{endpoint: '{a}', authType: AUTH_TOKEN, basicToken: sink-a-token, labels: {{env: dev}}}}
  - id: e-dep1-same
    objectKey: e_dep1_same
    scope: DEPLOYMENT
    scopeEntityId: d1
    metricsExport: {{endpoint: '{a}', authType: AUTH_TOKEN, basicToken: sink-a-token, labels: {{env: dev}}}}
  - id: e-restricted
    objectKey: e_restricted
    scope: WORKSPACE
    scopeEntityId: ws-1
    autoLinkDeployments: false
    links: [{{scope: DEPLOYMENT, scopeEntityId: d2}}]
    metricsExport: {{endpoint: '{b}', authType: BASIC, username: bob, password: sink-b-password, headers: {{X-Scope-OrgID: team-b}}}}
  - id: e-override
    objectKey: e_override
    scope: WORKSPACE
    scopeEntityId: ws-1
    autoLinkDeployments: true
    links:
      - scope: DEPLOYMENT
        scopeEntityId: d3
        overrides: {{metricsExport: {{endpoint: '{d}', headers: {{X-Debug: '1'}}}}}}
    metricsExport: {{endpoint: '{c}', labels: {{tier: gold}}}}
  - id: e-hybrid
    objectKey: e_hybrid
    scope: DEPLOYMENT
    scopeEntityId: d4
    metricsExport: {{endpoint: '{e}'}}
  - id: e-ws2
    objectKey: e_ws2
    scope: WORKSPACE
    scopeEntityId: ws-2
    autoLinkDeployments: true
    metricsExport: {{endpoint: '{f}'}}
",
        a = a.url(),
        b = b.url(),
        c = c.url(),
        d = d.url(),
        e = e.url(),
        f = f.url(),
    );
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("e2e-routing");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, &registry).unwrap();
    let gw = Gateway::start(
        "e2e-routing",
        &["--registry", path.to_str().unwrap(), "--catalog", "builtin"],
    );

    // Cluster a: d1 by deploymentId (with spoofed metadata), d2 by namespace,
    // a foreign deploymentId (d3 is on cluster b), an unknown namespace, a
    // name outside the catalog. Cluster b: d3 by namespace, d4 by deploymentId.
    let from_a = vec![
        series(
            0,
            0,
            &[
                ("__name__", "airflow_ti_failures_total"),
                ("deploymentId", "d1"),
                ("workspaceId", "evil"),
                ("cloud_provider", "fake"),
                ("pod", "p-1"),
                ("container", "scheduler"),
            ],
        ),
        series(
            0,
            1,
            &[
                ("__name__", "container_cpu_usage_seconds_total"),
                ("namespace", "ns-1"),
                ("cpu", "total"),
                ("pod", "p-2"),
            ],
        ),
        series(
            0,
            2,
            &[
                ("__name__", "airflow_task_duration"),
                ("namespace", "ns-2"),
                ("quantile", "0.5"),
                ("dag_id", "x"),
                ("organizationId", "spoof"),
            ],
        ),
        series(
            0,
            3,
            &[
                ("__name__", "airflow_ti_failures_total"),
                ("deploymentId", "d3"),
                ("namespace", "ns-1"),
            ],
        ),
        series(
            0,
            4,
            &[
                ("__name__", "airflow_ti_failures_total"),
                ("namespace", "ns-unknown"),
            ],
        ),
        series(
            0,
            5,
            &[("__name__", "go_goroutines"), ("namespace", "ns-1")],
        ),
    ];
    let from_b = vec![
        series(
            1,
            0,
            &[
                ("__name__", "kube_pod_status_phase"),
                ("namespace", "ns-3"),
                ("phase", "Running"),
            ],
        ),
        series(
            1,
            1,
            &[
                ("__name__", "airflow_dagbag_size"),
                ("deploymentId", "d4"),
                ("namespace", "ns-3"),
            ],
        ),
    ];
    let rounds = 20u32;
    let mut expected = Expectation::new();
    let kept = |s: &Sent, dep: &str| -> Vec<(String, String)> {
        let mut labels: BTreeMap<String, String> = s.labels.iter().cloned().collect();
        labels.extend(meta(dep));
        labels.into_iter().collect()
    };
    expected.expect(from_a[0].id, 0..rounds, ["A", "C"], kept(&from_a[0], "d1"));
    expected.expect(from_a[1].id, 0..rounds, ["A", "C"], kept(&from_a[1], "d1"));
    expected.expect(from_a[2].id, 0..rounds, ["B", "C"], kept(&from_a[2], "d2"));
    expected.expect(from_b[0].id, 0..rounds, ["A", "D"], kept(&from_b[0], "d3"));
    expected.expect(from_b[1].id, 0..rounds, ["E"], kept(&from_b[1], "d4"));

    let http = client();
    for seq in 0..rounds {
        let (s1, _) = write(&http, &gw.ingest, TOKEN_A, body(&from_a, seq)).await;
        let (s2, _) = write(&http, &gw.ingest, TOKEN_B, body(&from_b, seq)).await;
        assert_eq!((s1, s2), (204, 204), "log:\n{}", tail(&gw.log(), 30));
    }
    let all = [&a, &b, &c, &d, &e, &f];
    await_expectation(&expected, &all, Duration::from_secs(15), &gw).await;

    // Target labels: only the target's own.
    for (sink, want, absent) in [
        (&a, Some(("env", "dev")), "tier"),
        (&c, Some(("tier", "gold")), "env"),
        (&d, Some(("tier", "gold")), "env"),
        (&b, None, "env"),
        (&e, None, "tier"),
    ] {
        let r = sink.report();
        assert!(!r.series.is_empty(), "{} got nothing", r.name);
        for (id, rec) in &r.series {
            for set in &rec.label_sets {
                if let Some((k, v)) = want {
                    assert!(
                        set.iter().any(|(n, x)| n == k && x == v),
                        "{}: {id}: {set:?}",
                        r.name
                    );
                }
                assert!(
                    !set.iter().any(|(n, _)| n == absent),
                    "{}: {id}: {set:?}",
                    r.name
                );
                let names: Vec<&String> = set.iter().map(|(n, _)| n).collect();
                assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
            }
        }
    }
    assert_eq!(
        f.report().samples,
        0,
        "hybrid Deployments get no Workspace exports"
    );

    let a_url = a.url();
    let s = stats_when(&gw, |s| {
        s["out"]["samples"] == 9 * u64::from(rounds)
            && target_by_endpoint(s, &a_url)["samplesSent"] == 3 * u64::from(rounds)
    })
    .await;
    assert_eq!(s["out"]["samples"], 9 * u64::from(rounds), "{s}");
    assert_eq!(s["drops"]["foreign"], u64::from(rounds), "{s}");
    assert_eq!(s["drops"]["unattributed"], u64::from(rounds), "{s}");
    assert_eq!(s["drops"]["filtered"], u64::from(rounds), "{s}");
    assert_eq!(
        s["targets"].as_array().unwrap().len(),
        5,
        "A shared by two exports: {s}"
    );
    let ta = target_by_endpoint(&s, &a.url());
    assert_eq!(ta["samplesSent"], 3 * u64::from(rounds));
    assert_eq!(ta["state"], "healthy");
    assert_eq!(ta["feeds"].as_array().unwrap().len(), 3, "{ta}");
    // Secrets never show, in stats or metrics.
    let (status, metrics) = gw.request("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fanout_target_samples_sent_total"),
        "{metrics}"
    );
    for text in [&s.to_string(), &metrics, &gw.log()] {
        for secret in ["sink-a-token", "sink-b-password", TOKEN_A, TOKEN_B] {
            assert!(!text.contains(secret), "secret {secret} leaked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_targets_do_not_hurt_healthy_ones() {
    let healthy = sink("healthy", None, &[]).await;
    let flaky = sink_on(
        "flaky",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        &[],
        Fault {
            status: Some(503),
            status_for: Some(Duration::from_secs(3)),
            ..Fault::default()
        },
    )
    .await;
    let slow = sink_on(
        "slow",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        &[],
        Fault {
            delay: Duration::from_millis(400),
            ..Fault::default()
        },
    )
    .await;
    let bad = sink_on(
        "bad",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        &[],
        Fault {
            status: Some(400),
            ..Fault::default()
        },
    )
    .await;
    let down_port = free_port();
    let down_url = format!("http://127.0.0.1:{down_port}/api/v1/write");

    let export = |id: &str, url: &str| {
        format!(
            "  - {{id: {id}, objectKey: {id}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{url}', delivery: {{batchSendDeadline: 200ms, maxBackoff: 1s, timeout: 5s}}}}}}\n"
        )
    };
    let registry = format!(
        "{CLUSTERS}deployments:\n  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED, name: d1}}\nmetricsExports:\n{}{}{}{}{}",
        export("healthy", &healthy.url()),
        export("flaky", &flaky.url()),
        export("slow", &slow.url()),
        export("bad", &bad.url()),
        export("down", &down_url),
    );
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("e2e-isolation");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, &registry).unwrap();
    let gw = Gateway::start("e2e-isolation", &["--registry", path.to_str().unwrap()]);

    let sent: Vec<Sent> = (0..200)
        .map(|i| {
            series(
                0,
                i,
                &[
                    ("__name__", "airflow_pool_open_slots"),
                    ("pool", &format!("p{i}")),
                    ("namespace", "ns-1"),
                ],
            )
        })
        .collect();
    let rounds = 25u32;
    let http = client();
    let mut slowest = Duration::ZERO;
    let mut healthy_lag = Duration::ZERO;
    let started = Instant::now();
    let mut down_sink = None;
    for seq in 0..rounds {
        let (status, took) = write(&http, &gw.ingest, TOKEN_A, body(&sent, seq)).await;
        assert_eq!(status, 204, "log:\n{}", tail(&gw.log(), 30));
        slowest = slowest.max(took);
        // The healthy target keeps up: everything up to this round arrives
        // within 1.5 s (its batch deadline is 200 ms), while the others fail.
        let want = u64::from(seq + 1) * sent.len() as u64;
        let t0 = Instant::now();
        while healthy.stats().samples < want && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        healthy_lag = healthy_lag.max(t0.elapsed());
        if seq == 15 {
            // The down target comes up.
            down_sink = Some(
                sink_on(
                    "down",
                    SocketAddr::from(([127, 0, 0, 1], down_port)),
                    None,
                    &[],
                    Fault::default(),
                )
                .await,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "ingest slowed down: {slowest:?}"
    );
    assert!(
        healthy_lag < Duration::from_millis(1500),
        "healthy target lagged {healthy_lag:?}"
    );
    let down = down_sink.expect("down sink started");

    let mut expected = Expectation::new();
    for s in &sent {
        expected.expect(
            s.id,
            0..rounds,
            ["healthy", "flaky", "slow", "down"],
            meta("d1"),
        );
    }
    await_expectation(
        &expected,
        &[&healthy, &flaky, &slow, &down],
        Duration::from_secs(20),
        &gw,
    )
    .await;
    assert_eq!(bad.report().samples, 0);

    let total = u64::from(rounds) * sent.len() as u64;
    let (bad_url, flaky_url) = (bad.url(), flaky.url());
    let s = stats_when(&gw, |s| {
        target_by_endpoint(s, &bad_url)["dropped"]["rejected"] == total
            && target_by_endpoint(s, &flaky_url)["samplesSent"] == total
    })
    .await;
    let b = target_by_endpoint(&s, &bad.url());
    assert_eq!(b["dropped"]["rejected"], total, "{b}");
    assert!(b["failures"]["400"].as_u64().unwrap_or(0) >= 1, "{b}");
    assert_eq!(b["lastError"]["status"], 400, "{b}");
    assert_eq!(s["drops"]["rejected"], total, "{s}");
    let fl = target_by_endpoint(&s, &flaky.url());
    assert!(fl["failures"]["503"].as_u64().unwrap_or(0) >= 1, "{fl}");
    assert!(fl["retries"].as_u64().unwrap_or(0) >= 1, "{fl}");
    assert_eq!(fl["samplesSent"], total, "{fl}");
    let dn = target_by_endpoint(&s, &down_url);
    assert!(dn["failures"]["connect"].as_u64().unwrap_or(0) >= 1, "{dn}");
    let h = target_by_endpoint(&s, &healthy.url());
    assert_eq!(h["failures"], serde_json::json!({}), "{h}");
    assert!(h["latencyMs"]["p99"].as_f64().unwrap() > 0.0, "{h}");
    let sl = target_by_endpoint(&s, &slow.url());
    assert!(sl["latencyMs"]["p50"].as_f64().unwrap() >= 400.0, "{sl}");
    eprintln!(
        "isolation: ingest max {slowest:?}, healthy lag max {healthy_lag:?}, total {:?}",
        started.elapsed()
    );

    // Pause/resume through the API.
    let id = h["id"].as_str().unwrap();
    let (st, body) = gw.request("POST", &format!("/api/v1/targets/{id}/pause"), None);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"paused\""), "{body}");
    let paused: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(paused["state"], "paused");
    let (st, _) = gw.request("POST", &format!("/api/v1/targets/{id}/resume"), None);
    assert_eq!(st, 200);
    let (st, _) = gw.request("POST", "/api/v1/targets/nope/pause", None);
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_change_while_traffic_flows() {
    let stay = sink("stay", None, &[]).await;
    let before = sink("before", None, &[]).await;
    let after = sink("after", None, &[]).await;
    let export = |id: &str, url: &str| {
        format!(
            "  - {{id: {id}, objectKey: {id}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{url}', delivery: {{batchSendDeadline: 100ms}}}}}}\n"
        )
    };
    let head = format!(
        "{CLUSTERS}deployments:\n  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED, name: d1}}\nmetricsExports:\n"
    );
    let registry = format!(
        "{head}{}{}",
        export("stay", &stay.url()),
        export("moving", &before.url())
    );
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("e2e-change");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, &registry).unwrap();
    let gw = Gateway::start("e2e-change", &["--registry", path.to_str().unwrap()]);

    let sent: Vec<Sent> = (0..300)
        .map(|i| {
            series(
                0,
                i,
                &[
                    ("__name__", "kube_pod_labels"),
                    ("pod", &format!("pod-{i}")),
                    ("deploymentId", "d1"),
                ],
            )
        })
        .collect();
    let rounds = 40u32;
    let http = client();
    let mut changed_at = None;
    for seq in 0..rounds {
        let (status, _) = write(&http, &gw.ingest, TOKEN_A, body(&sent, seq)).await;
        assert_eq!(status, 204);
        if seq == 20 {
            let patch = format!(
                "{{\"metricsExport\": {{\"endpoint\": \"{}\"}}}}",
                after.url()
            );
            let (st, body) = gw.request(
                "PATCH",
                "/api/v1/metrics-exports/moving",
                Some(("application/merge-patch+json", &patch)),
            );
            assert_eq!(st, 200, "{body}");
            changed_at = Some(seq);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let changed_at = changed_at.unwrap();
    let mut expected = Expectation::new();
    for s in &sent {
        expected.expect(s.id, 0..rounds, ["stay"], meta("d1"));
    }
    await_expectation(&expected, &[&stay], Duration::from_secs(15), &gw).await;
    // Every round reached the moving export at one endpoint or the other,
    // and the rounds after the change reached the new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rb, ra) = (before.report(), after.report());
        let missing: Vec<(SeriesId, u32)> = sent
            .iter()
            .flat_map(|s| (0..rounds).map(move |q| (s.id, q)))
            .filter(|(id, q)| {
                !rb.series.get(id).is_some_and(|r| r.seqs.contains(*q))
                    && !ra.series.get(id).is_some_and(|r| r.seqs.contains(*q))
            })
            .collect();
        let late_ok = sent.iter().all(|s| {
            ra.series
                .get(&s.id)
                .is_some_and(|r| ((changed_at + 1)..rounds).all(|q| r.seqs.contains(q)))
        });
        if missing.is_empty() && late_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moving export: {} samples missing (first {:?}), late rounds at new endpoint: {late_ok}",
            missing.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = stats(&gw);
    assert_eq!(
        s["targets"].as_array().unwrap().len(),
        2,
        "old target drained and stopped: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_delivers_queued_data_within_the_grace() {
    let slow = sink_on(
        "slow",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        &[],
        Fault {
            delay: Duration::from_millis(200),
            ..Fault::default()
        },
    )
    .await;
    // Long deadline: the data is still queued when SIGTERM arrives.
    let registry = format!(
        "{CLUSTERS}deployments:\n  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED, name: d1}}\nmetricsExports:\n  - {{id: s, objectKey: s, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{batchSendDeadline: 1m, maxSamplesPerSend: 100, maxConcurrency: 1}}}}}}\n",
        slow.url()
    );
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("e2e-sigterm");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, &registry).unwrap();
    let mut gw = Gateway::start(
        "e2e-sigterm",
        &[
            "--registry",
            path.to_str().unwrap(),
            "--shutdown-grace",
            "20s",
        ],
    );
    let sent: Vec<Sent> = (0..50)
        .map(|i| {
            series(
                0,
                i,
                &[
                    ("__name__", "kube_pod_labels"),
                    ("pod", &format!("pod-{i}")),
                    ("namespace", "ns-1"),
                ],
            )
        })
        .collect();
    let rounds = 10u32;
    let http = client();
    for seq in 0..rounds {
        let (status, _) = write(&http, &gw.ingest, TOKEN_A, body(&sent, seq)).await;
        assert_eq!(status, 204);
    }
    assert!(
        slow.stats().samples < 500,
        "nothing should be due before the deadline"
    );
    let t0 = Instant::now();
    let status = tokio::task::block_in_place(|| gw.terminate(Duration::from_secs(30)));
    let status = status.unwrap_or_else(|| panic!("no exit within 30s; log:\n{}", gw.log()));
    assert!(status.success(), "exit {status:?}; log:\n{}", gw.log());
    let mut expected = Expectation::new();
    for s in &sent {
        expected.expect(s.id, 0..rounds, ["slow"], meta("d1"));
    }
    let problems = expected.check(&[slow.report()]);
    assert!(
        problems.is_empty(),
        "{:?}\nlog:\n{}",
        &problems[..problems.len().min(5)],
        gw.log()
    );
    eprintln!(
        "sigterm: drained 500 samples in 5+ batches in {:?}",
        t0.elapsed()
    );
}
