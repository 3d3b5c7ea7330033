//! Remote-write 2.0 egress (issue 13) with the real `fanout serve` and
//! verifying sinks on 127.0.0.1:
//!
//! - `a_v2_target_gets_v1_and_v2_input_as_v2`: a `protocol: V2` target
//!   gets every sample of 1.0 and 2.0 input, in order per series, with the
//!   stamped labels, in 2.0 requests only (the sink decodes 2.0 and answers
//!   with the Written headers); `/api/v1/targets` says `V2`.
//! - `a_v2_target_gets_everything_each_sender_gave`: 2.0 input with
//!   exemplars, native histograms, metadata and created timestamps, and 1.0
//!   input with exemplars, histograms and request metadata, arrive at a V2
//!   target exactly as given, with the stamped labels: the sink resolves
//!   every symbol of every 2.0 request and compares series by series.
//! - `v1_only_receivers_get_everything_through_the_fallback`: two
//!   `protocol: V2` targets whose receivers speak only 1.0, one refusing 2.0
//!   with 415, one reading it as 1.0 and answering 204 without the Written
//!   headers (as Prometheus 2.x does). Both get every sample exactly once,
//!   in order, as 1.0 after the first 2.0 attempt; `/api/v1/targets` shows
//!   `V1 (fallback: <reason>)` for each.

use std::net::SocketAddr;
use std::time::Duration;

use std::time::Instant;

use bytes::Bytes;
use fanout_loadtest::identity::now_ms;
use fanout_loadtest::sink::{Sink, SinkConfig, SinkHandle, V1Only, V2Series};
use fanout_proto::{v1, v2};
use fanout_tests::fanout::{free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, await_all, client, in_order, round, targets};

const TOKEN: &str = "egress-v2-ingest-token";

/// Cluster `cl-a`, Deployment `d1`, and one `protocol: V2` export of d1 per
/// `(id, port)`.
fn registry(exports: &[(&str, u16)]) -> String {
    let mut yaml = rounds::registry(TOKEN, "");
    yaml.push_str("metricsExports:\n");
    for (id, port) in exports {
        yaml.push_str(&format!(
            "  - {{id: {id}, objectKey: {id}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{protocol: V2, batchSendDeadline: 50ms, maxSamplesPerSend: 500, maxBackoff: 200ms}}}}}}\n",
            rounds::endpoint(*port)
        ));
    }
    yaml
}

async fn sink(name: &str, port: u16, v1_only: V1Only) -> SinkHandle {
    Sink::start(SinkConfig {
        name: name.to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        v1_only,
        keep_v2_series: true,
        ..SinkConfig::default()
    })
    .await
    .expect("sink starts")
}

fn start(name: &str, exports: &[(&str, u16)]) -> (Gateway, TempDir) {
    start_with(name, exports, &[])
}

/// [`start`] with more `fanout serve` flags.
fn start_with(name: &str, exports: &[(&str, u16)], flags: &[&str]) -> (Gateway, TempDir) {
    let dir = TempDir::new(&format!("{name}-conf"));
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(exports)).unwrap();
    let mut args = vec!["--registry", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    let gw = Gateway::start(name, &args);
    (gw, dir)
}

/// The `protocol` of the target whose endpoint has `port`.
fn protocol_of(gw: &Gateway, port: u16) -> String {
    targets(gw)
        .iter()
        .find(|t| {
            t["endpoint"]
                .as_str()
                .is_some_and(|e| e.contains(&format!(":{port}/")))
        })
        .and_then(|t| t["protocol"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_target_gets_v1_and_v2_input_as_v2() {
    let port = free_port();
    let sink = sink("t", port, V1Only::No).await;
    let (gw, _conf) = start("egress-v2", &[("s", port)]);
    let http = client();
    let sent: Vec<u32> = (0..40).collect();
    for &seq in &sent {
        // Every other round as 2.0 input.
        let status = match seq % 2 {
            0 => rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            _ => rounds::write_v2(&http, &gw.ingest, TOKEN, round(0, seq)).await,
        };
        assert_eq!(status, 204, "round {seq}");
    }
    await_all(&in_order("t", &sent), &sink, &gw, Duration::from_secs(30)).await;
    let report = sink.report();
    assert_eq!(
        report.protocols.keys().collect::<Vec<_>>(),
        ["v2"],
        "2.0 requests only: {:?}",
        report.protocols
    );
    // The stamped labels arrive with every series.
    for (id, rec) in &report.series {
        assert!(
            rec.label_sets
                .iter()
                .all(|l| l.iter().any(|(k, v)| k == "deploymentId" && v == "d1")),
            "series {id:?}: {:?}",
            rec.label_sets
        );
    }
    assert_eq!(protocol_of(&gw, port), "V2");
    eprintln!(
        "V2 target: {} samples in {} requests, all 2.0",
        report.samples, report.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_only_receivers_get_everything_through_the_fallback() {
    let (p415, pmis) = (free_port(), free_port());
    let refusing = sink("r", p415, V1Only::Refuse).await;
    let misreading = sink("m", pmis, V1Only::Misread).await;
    let (gw, _conf) = start("egress-v2-fallback", &[("r", p415), ("m", pmis)]);
    let http = client();
    let sent: Vec<u32> = (0..30).collect();
    for &seq in &sent {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    // Exactly once each, in order: a duplicate or a gap is a problem.
    await_all(
        &in_order("r", &sent),
        &refusing,
        &gw,
        Duration::from_secs(30),
    )
    .await;
    await_all(
        &in_order("m", &sent),
        &misreading,
        &gw,
        Duration::from_secs(30),
    )
    .await;
    for (s, what) in [(&refusing, "415"), (&misreading, "204 without")] {
        let r = s.report();
        assert!(
            r.v2_refused >= 1,
            "{what}: the first attempt was 2.0: {r:?}"
        );
        assert!(
            r.protocols.get("v1").copied().unwrap_or(0) >= 1,
            "{what}: {:?}",
            r.protocols
        );
    }
    let refused = protocol_of(&gw, p415);
    assert!(refused.starts_with("V1 (fallback: 415"), "{refused}");
    let misread = protocol_of(&gw, pmis);
    assert_eq!(
        misread,
        "V1 (fallback: 204 without X-Prometheus-Remote-Write-Samples-Written)"
    );
    let log = gw.log();
    assert!(log.contains("falling back to 1.0"), "{log}");
    eprintln!("fallbacks: {refused} | {misread}");
}

/// A native histogram observed at `ts`.
fn histogram(ts: i64, count: u64) -> v2::Histogram {
    v2::Histogram {
        count: Some(v2::histogram::Count::CountInt(count)),
        sum: 0.75 * count as f64,
        schema: 3,
        zero_threshold: 1e-128,
        zero_count: Some(v2::histogram::ZeroCount::ZeroCountInt(1)),
        positive_spans: vec![v2::BucketSpan {
            offset: -2,
            length: 3,
        }],
        positive_deltas: vec![1, 0, -1],
        reset_hint: v2::histogram::ResetHint::No as i32,
        timestamp: ts,
        ..Default::default()
    }
}

fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_target_gets_everything_each_sender_gave() {
    let port = free_port();
    let sink = sink("t", port, V1Only::No).await;
    // Any metric name: these are not Airflow's.
    let (gw, _conf) = start_with("egress-v2-exact", &[("s", port)], &["--catalog", "all"]);
    let http = client();
    let now = now_ms();
    let symbols = [
        "",
        "__name__",
        "http_requests_total",
        "namespace",
        "ns-1",
        "pod",
        "p-1",
        "Requests served.",
        "requests",
        "trace_id",
        "abc",
        "rpc_latency_seconds",
        "Latency of calls.",
        "seconds",
        "temperature",
    ];
    let sym = |s: &str| symbols.iter().position(|x| *x == s).unwrap() as u32;
    let refs = |l: &[(&str, &str)]| l.iter().flat_map(|(k, v)| [sym(k), sym(v)]).collect();
    let (a, b, c) = (
        [
            ("__name__", "http_requests_total"),
            ("namespace", "ns-1"),
            ("pod", "p-1"),
        ],
        [
            ("__name__", "rpc_latency_seconds"),
            ("namespace", "ns-1"),
            ("pod", "p-1"),
        ],
        [
            ("__name__", "temperature"),
            ("namespace", "ns-1"),
            ("pod", "p-1"),
        ],
    );
    let from_v2 = v2::Request {
        symbols: symbols.iter().map(|s| (*s).to_owned()).collect(),
        timeseries: vec![
            v2::TimeSeries {
                labels_refs: refs(&a),
                samples: vec![
                    v2::Sample {
                        value: 1.0,
                        timestamp: now,
                    },
                    v2::Sample {
                        value: 2.0,
                        timestamp: now + 1,
                    },
                ],
                exemplars: vec![v2::Exemplar {
                    labels_refs: refs(&[("trace_id", "abc")]),
                    value: 0.5,
                    timestamp: now,
                }],
                metadata: Some(v2::Metadata {
                    r#type: v2::metadata::MetricType::Counter as i32,
                    help_ref: sym("Requests served."),
                    unit_ref: sym("requests"),
                }),
                created_timestamp: now - 60_000,
                ..Default::default()
            },
            v2::TimeSeries {
                labels_refs: refs(&b),
                histograms: vec![histogram(now, 4), histogram(now + 1, 6)],
                metadata: Some(v2::Metadata {
                    r#type: v2::metadata::MetricType::Histogram as i32,
                    help_ref: sym("Latency of calls."),
                    unit_ref: sym("seconds"),
                }),
                created_timestamp: now - 30_000,
                ..Default::default()
            },
            v2::TimeSeries {
                labels_refs: refs(&c),
                samples: vec![v2::Sample {
                    value: 21.5,
                    timestamp: now,
                }],
                ..Default::default()
            },
        ],
    };
    let label = |name: &str, value: &str| v1::Label {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let (d, e) = (
        [
            ("__name__", "jobs_total"),
            ("namespace", "ns-1"),
            ("pod", "p-2"),
        ],
        [
            ("__name__", "queue_wait_seconds"),
            ("namespace", "ns-1"),
            ("pod", "p-2"),
        ],
    );
    let v1_histogram =
        prost::Message::decode(prost::Message::encode_to_vec(&histogram(now, 9)).as_slice())
            .expect("the same field numbers in 1.0 and 2.0");
    let from_v1 = v1::WriteRequest {
        timeseries: vec![
            v1::TimeSeries {
                labels: d.iter().map(|(k, v)| label(k, v)).collect(),
                samples: vec![v1::Sample {
                    value: 7.0,
                    timestamp: now,
                }],
                exemplars: vec![v1::Exemplar {
                    labels: vec![label("trace_id", "def")],
                    value: 1.5,
                    timestamp: now,
                }],
                histograms: vec![],
            },
            v1::TimeSeries {
                labels: e.iter().map(|(k, v)| label(k, v)).collect(),
                histograms: vec![v1_histogram],
                ..Default::default()
            },
        ],
        metadata: vec![v1::MetricMetadata {
            r#type: v1::metric_metadata::MetricType::Counter as i32,
            metric_family_name: "jobs".to_owned(),
            help: "Jobs run.".to_owned(),
            unit: String::new(),
        }],
    };
    let snappy = |b: Vec<u8>| Bytes::from(fanout_proto::snappy::compress(&b));
    use prost::Message as _;
    assert_eq!(
        rounds::write_as(
            &http,
            &gw.ingest,
            TOKEN,
            snappy(from_v2.encode_to_vec()),
            true
        )
        .await,
        204
    );
    assert_eq!(
        rounds::write_as(
            &http,
            &gw.ingest,
            TOKEN,
            snappy(from_v1.encode_to_vec()),
            false
        )
        .await,
        204
    );

    // What each series must be at the target (labels as sent; the stamped
    // ones are checked apart).
    let set =
        |l: &[(&str, &str)]| -> Vec<String> { l.iter().map(|(k, v)| format!("{k}={v}")).collect() };
    let meta = |t: i32, help: &str, unit: &str| {
        std::collections::BTreeSet::from([(t, help.to_owned(), unit.to_owned())])
    };
    let want: Vec<(Vec<String>, V2Series)> = vec![
        (
            set(&a),
            V2Series {
                samples: vec![(1.0, now), (2.0, now + 1)],
                exemplars: vec![(pairs(&[("trace_id", "abc")]), 0.5, now)],
                metadata: meta(1, "Requests served.", "requests"),
                created_timestamps: [now - 60_000].into(),
                ..V2Series::default()
            },
        ),
        (
            set(&b),
            V2Series {
                histograms: vec![histogram(now, 4), histogram(now + 1, 6)],
                metadata: meta(3, "Latency of calls.", "seconds"),
                created_timestamps: [now - 30_000].into(),
                ..V2Series::default()
            },
        ),
        (
            set(&c),
            V2Series {
                samples: vec![(21.5, now)],
                ..V2Series::default()
            },
        ),
        (
            set(&d),
            V2Series {
                samples: vec![(7.0, now)],
                exemplars: vec![(pairs(&[("trace_id", "def")]), 1.5, now)],
                metadata: meta(1, "Jobs run.", ""),
                ..V2Series::default()
            },
        ),
        (
            set(&e),
            V2Series {
                histograms: vec![histogram(now, 9)],
                ..V2Series::default()
            },
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = sink.report();
        let arrived: usize = r
            .v2_series
            .values()
            .map(|s| s.samples.len() + s.histograms.len())
            .sum();
        if arrived >= 7 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report.protocols.keys().collect::<Vec<_>>(), ["v2"]);
    assert_eq!(
        report.v2_series.len(),
        want.len(),
        "{:#?}",
        report.v2_series
    );
    for (sent, expected) in &want {
        let (labels, got) = report
            .v2_series
            .iter()
            .find(|(labels, _)| {
                let have: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                sent.iter().all(|l| have.contains(l))
            })
            .unwrap_or_else(|| panic!("{sent:?} not at the target: {:#?}", report.v2_series));
        // Stamped: the Deployment and its cluster's metadata.
        assert!(
            labels.contains(&("deploymentId".to_owned(), "d1".to_owned())),
            "{labels:?}"
        );
        assert_eq!(got, expected, "series {sent:?}");
    }
    eprintln!(
        "V2 target: {} series exactly as sent (labels stamped), {} requests",
        want.len(),
        report.requests
    );
}
