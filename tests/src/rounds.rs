//! The workload of the spill and config-change end-to-end tests: one cluster
//! `cl-a` with Deployment `d1` (namespace `ns-1`) and one metrics export,
//! written in *rounds*. Round `seq` of cluster `c` is one request with one
//! sample for each of [`SERIES`] series, whose value is the fanout-load
//! identity (`SampleId`), so a verifying [`Sink`] knows exactly which
//! samples arrived, how often and in which order. A writer that sends one
//! request at a time with rising rounds defines the per-series order the
//! gateway must keep (`Expectation::require_order`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_loadtest::identity::{now_ms, SampleId, SeriesId};
use fanout_loadtest::sink::{Sink, SinkConfig, SinkHandle};
use fanout_loadtest::verify::{Expectation, Problem};
use fanout_proto::v1;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::fanout::Gateway;

/// Series per round.
pub const SERIES: u32 = 200;

/// The HTTP/1.1 client the tests write with.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`].
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The registry: cluster `cl-a` (ingest token `token`), Workspace `ws-1`,
/// Deployment `d1`, and, unless `export` is empty, export `s` of `d1` with
/// the `metricsExport` fields `export` (a YAML flow mapping's inside, e.g.
/// `endpoint: 'http://...', delivery: {maxConcurrency: 4}`).
pub fn registry(token: &str, export: &str) -> String {
    let mut yaml = format!(
        "clusters:\n  - {{id: cl-a, organizationId: org-cl-a, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: {token}}}\n\
workspaces:\n  - {{id: ws-1, organizationId: org-w1, name: one}}\n\
deployments:\n  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED, name: d1}}\n"
    );
    if !export.is_empty() {
        yaml.push_str(&format!(
            "metricsExports:\n  - {{id: s, objectKey: s, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{{export}}}}}\n"
        ));
    }
    yaml
}

/// The endpoint URL of a sink on `port`.
pub fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}/api/v1/write")
}

/// Round `seq` of `cluster` (its own pods, so clusters are distinct series):
/// a snappy-compressed remote-write 1.0 body of [`SERIES`] series.
pub fn round(cluster: u32, seq: u32) -> Bytes {
    round_of(cluster, seq, SERIES)
}

/// Round `seq` of `cluster` with `series` series.
pub fn round_of(cluster: u32, seq: u32, series: u32) -> Bytes {
    round_in(cluster, "ns-1", seq, series)
}

/// Round `seq` of `cluster` with `series` series in `namespace` (which
/// attributes them to that namespace's Deployment).
pub fn round_in(cluster: u32, namespace: &str, seq: u32, series: u32) -> Bytes {
    let ts = timestamp();
    let req = v1::WriteRequest {
        timeseries: (0..series)
            .map(|i| v1::TimeSeries {
                labels: [
                    ("__name__", "kube_pod_labels".to_owned()),
                    ("namespace", namespace.to_owned()),
                    ("pod", format!("pod-{cluster}-{i:04}")),
                ]
                .into_iter()
                .map(|(name, value)| v1::Label {
                    name: name.to_owned(),
                    value,
                })
                .collect(),
                samples: vec![v1::Sample {
                    value: SampleId {
                        id: SeriesId { cluster, series: i },
                        seq,
                    }
                    .to_value(),
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

/// The timestamp of a new round: now (so a sink's end-to-end latency is
/// the delivery's), and above every earlier round's of this process, so a
/// series' samples rise even when rounds are made within one millisecond.
fn timestamp() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let next = |last: i64| last.max(now - 1) + 1;
    let last = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(next(l)))
        .unwrap_or_default();
    next(last)
}

/// One write to the gateway at `ingest`: its status, or `None` on a
/// transport error or no answer within 10 s (a gateway being killed).
pub async fn try_write(client: &HttpClient, ingest: &str, token: &str, body: Bytes) -> Option<u16> {
    try_write_as(client, ingest, token, body, false).await
}

/// [`write`] of a round as remote-write 2.0: `body` (a snappy 1.0 body, as
/// [`round`] makes) is rewritten as a 2.0 request and sent with the 2.0
/// headers.
pub async fn write_v2(client: &HttpClient, ingest: &str, token: &str, body: Bytes) -> u16 {
    let raw = fanout_proto::snappy::decompress(&body, 1 << 30).expect("a snappy body");
    let mut v2 = Vec::new();
    fanout_proto::v2write::from_v1(&raw, &fanout_proto::v2write::NoMetadata, &mut v2)
        .expect("a 1.0 body");
    let body = Bytes::from(fanout_proto::snappy::compress(&v2));
    try_write_as(client, ingest, token, body, true)
        .await
        .expect("ingest reachable and answering within 10s")
}

/// One write of `body` (snappy, 1.0 or with `v2` 2.0) as it is; its status.
pub async fn write_as(
    client: &HttpClient,
    ingest: &str,
    token: &str,
    body: Bytes,
    v2: bool,
) -> u16 {
    try_write_as(client, ingest, token, body, v2)
        .await
        .expect("ingest reachable and answering within 10s")
}

/// A remote-write POST of `body` (snappy, 1.0 or with `v2` 2.0) to the
/// gateway at `ingest` with cluster token `token`.
pub fn write_request(
    ingest: &str,
    token: &str,
    body: Bytes,
    v2: bool,
) -> http::Request<Full<Bytes>> {
    let (content_type, version) = match v2 {
        true => (
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            "2.0.0",
        ),
        false => ("application/x-protobuf", "0.1.0"),
    };
    http::Request::post(format!("http://{ingest}/api/v1/write"))
        .header("content-encoding", "snappy")
        .header("content-type", content_type)
        .header("x-prometheus-remote-write-version", version)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(body))
        .expect("request")
}

async fn try_write_as(
    client: &HttpClient,
    ingest: &str,
    token: &str,
    body: Bytes,
    v2: bool,
) -> Option<u16> {
    let req = write_request(ingest, token, body, v2);
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// One write to a running gateway: its status. Panics when the gateway does
/// not answer within 10 s: ingest must never hang.
pub async fn write(client: &HttpClient, ingest: &str, token: &str, body: Bytes) -> u16 {
    try_write(client, ingest, token, body)
        .await
        .expect("ingest reachable and answering within 10s")
}

/// A verifying sink named `name` on `port`; with `headers` it refuses (400)
/// requests that lack them.
pub async fn sink_at(port: u16, name: &str, headers: &[(&str, &str)]) -> SinkHandle {
    Sink::start(SinkConfig {
        name: name.to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..SinkConfig::default()
    })
    .await
    .expect("sink starts")
}

/// Adds: every series of `cluster` in the `acked` rounds, once, at `target`.
pub fn expect_rounds(e: &mut Expectation, target: &str, cluster: u32, acked: &[u32]) {
    for i in 0..SERIES {
        e.expect(
            SeriesId { cluster, series: i },
            acked.iter().copied(),
            [target],
            Vec::<(String, String)>::new(),
        );
    }
}

/// Every series of cluster 0 in the `acked` rounds, once each, in order, at
/// `target`.
pub fn in_order(target: &str, acked: &[u32]) -> Expectation {
    let mut e = Expectation::new();
    expect_rounds(&mut e, target, 0, acked);
    e.require_order();
    e
}

/// Waits until `sink` meets `e`; panics with the problems, the targets and
/// the gateway's log after `timeout`, and at once on samples out of order
/// (waiting cannot repair that).
pub async fn await_all(e: &Expectation, sink: &SinkHandle, gw: &Gateway, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let problems = e.check(&[sink.report()]);
        if problems.is_empty() {
            return;
        }
        let disorder = problems
            .iter()
            .filter(|p| matches!(p, Problem::OutOfOrder { .. }))
            .count();
        if disorder > 0 || Instant::now() > deadline {
            let shown: Vec<String> = problems.iter().take(10).map(|p| p.to_string()).collect();
            panic!(
                "{} problems ({disorder} series out of order):\n{}\ntargets: {}\nlog:\n{}",
                problems.len(),
                shown.join("\n"),
                gw.request("GET", "/api/v1/targets", None).1,
                gw.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` of the admin API as JSON (asserts 200).
pub fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    let (status, body) = gw.request("GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The targets of `/api/v1/targets`.
pub fn targets(gw: &Gateway) -> Vec<serde_json::Value> {
    let v = admin_json(gw, "/api/v1/targets");
    v.get("items")
        .cloned()
        .unwrap_or(v)
        .as_array()
        .cloned()
        .expect("targets array")
}

/// The only target of `/api/v1/targets`.
pub fn target(gw: &Gateway) -> serde_json::Value {
    let list = targets(gw);
    assert_eq!(list.len(), 1, "one target: {list:?}");
    list.into_iter().next().expect("one target")
}

/// `orphanBacklogs` of `/api/v1/stats`.
pub fn orphans(gw: &Gateway) -> Vec<serde_json::Value> {
    let v = admin_json(gw, "/api/v1/stats");
    v["orphanBacklogs"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no orphanBacklogs in {v}"))
}
