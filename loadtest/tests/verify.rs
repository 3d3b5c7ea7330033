//! The sink's verification must fail on each kind of delivery error: these
//! tests send crafted requests to in-process sinks on 127.0.0.1 and assert
//! that the problem is reported (and that exact delivery reports none).

use std::time::Duration;

use bytes::Bytes;
use fanout_loadtest::client::{Conn, Target, Transport};
use fanout_loadtest::identity::{SampleId, SeriesId};
use fanout_loadtest::sink::{ExpectedAuth, Sink, SinkConfig, SinkHandle};
use fanout_loadtest::verify::{self, Expectation, Problem};
use fanout_proto::v1;
use http::HeaderMap;
use prost::Message as _;

const T: Duration = Duration::from_secs(5);

async fn sink(name: &str) -> SinkHandle {
    Sink::start(SinkConfig {
        name: name.to_owned(),
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

fn labels(ns: &str, series: u32) -> Vec<v1::Label> {
    [
        ("__name__", "airflow_dagbag_size".to_owned()),
        ("namespace", ns.to_owned()),
        ("series", series.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| v1::Label {
        name: k.to_owned(),
        value: v,
    })
    .collect()
}

/// One request with one sample per (series, seq), all in namespace `ns`.
fn body(ns: &str, samples: &[(u32, u32)]) -> Bytes {
    let req = v1::WriteRequest {
        timeseries: samples
            .iter()
            .map(|&(series, seq)| v1::TimeSeries {
                labels: labels(ns, series),
                samples: vec![v1::Sample {
                    value: SampleId {
                        id: SeriesId { cluster: 0, series },
                        seq,
                    }
                    .to_value(),
                    timestamp: fanout_loadtest::identity::now_ms(),
                }],
                ..Default::default()
            })
            .collect(),
        metadata: Vec::new(),
    };
    Bytes::from(fanout_proto::snappy::compress(&req.encode_to_vec()))
}

async fn post(sink: &SinkHandle, headers: &[(&str, &str)], body: Bytes) -> u16 {
    let target = Target::resolve(&sink.url(), Transport::Http1, None)
        .await
        .unwrap();
    let mut conn = tokio::time::timeout(T, Conn::connect(&target))
        .await
        .unwrap()
        .unwrap();
    let mut h = HeaderMap::new();
    h.insert("content-encoding", "snappy".parse().unwrap());
    h.insert("content-type", "application/x-protobuf".parse().unwrap());
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let reply = tokio::time::timeout(T, conn.post(&target, &h, body))
        .await
        .unwrap()
        .unwrap();
    reply.status.as_u16()
}

fn id(series: u32) -> SeriesId {
    SeriesId { cluster: 0, series }
}

fn expect_ns(
    e: &mut Expectation,
    series: u32,
    seqs: std::ops::Range<u32>,
    targets: &[&str],
    ns: &str,
) {
    e.expect(
        id(series),
        seqs,
        targets.iter().copied(),
        [("namespace", ns)],
    );
}

#[tokio::test]
async fn exact_delivery_has_no_problems() {
    let a = sink("a").await;
    let b = sink("b").await;
    assert_eq!(
        post(&a, &[], body("ns-1", &[(0, 0), (1, 0), (0, 1), (1, 1)])).await,
        204
    );
    assert_eq!(post(&b, &[], body("ns-1", &[(1, 0), (1, 1)])).await, 204);
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..2, &["a"], "ns-1");
    expect_ns(&mut e, 1, 0..2, &["a", "b"], "ns-1");
    let problems = e.check(&[a.report(), b.report()]);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(verify::self_check(&a.report()).is_empty());
    assert!(a.report().latency_ms.count == 4);
}

#[tokio::test]
async fn missing_sample_is_reported() {
    let a = sink("a").await;
    assert_eq!(
        post(&a, &[], body("ns-1", &[(0, 0), (0, 1), (0, 3)])).await,
        204
    );
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..4, &["a"], "ns-1");
    // A second target that got nothing at all.
    expect_ns(&mut e, 0, 0..4, &["b"], "ns-1");
    let problems = e.check(&[a.report()]);
    assert_eq!(
        problems,
        vec![
            Problem::Missing {
                target: "a".into(),
                id: id(0),
                count: 1,
                first_seq: 2
            },
            Problem::Missing {
                target: "b".into(),
                id: id(0),
                count: 4,
                first_seq: 0
            },
        ]
    );
    // The sink alone sees the gap below the highest round too.
    assert!(matches!(
        verify::self_check(&a.report())[..],
        [Problem::Missing {
            count: 1,
            first_seq: 2,
            ..
        }]
    ));
}

#[tokio::test]
async fn duplicated_sample_is_reported() {
    let a = sink("a").await;
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 0), (0, 1)])).await, 204);
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 1)])).await, 204);
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..2, &["a"], "ns-1");
    let problems = e.check(&[a.report()]);
    assert_eq!(
        problems,
        vec![Problem::Duplicated {
            target: "a".into(),
            id: id(0),
            copies: 1,
            first_seq: Some(1)
        }]
    );
}

#[tokio::test]
async fn misrouted_samples_are_reported() {
    let a = sink("a").await;
    let b = sink("b").await;
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 0)])).await, 204);
    // Series 0 must not reach b; series 7 is not expected anywhere; round 5 of
    // series 0 was never sent.
    assert_eq!(post(&b, &[], body("ns-1", &[(0, 0), (7, 0)])).await, 204);
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 5)])).await, 204);
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..1, &["a"], "ns-1");
    let problems = e.check(&[a.report(), b.report()]);
    assert_eq!(
        problems,
        vec![
            Problem::Misrouted {
                target: "a".into(),
                id: id(0),
                samples: 1
            },
            Problem::Misrouted {
                target: "b".into(),
                id: id(0),
                samples: 1
            },
            Problem::Misrouted {
                target: "b".into(),
                id: id(7),
                samples: 1
            },
        ]
    );
}

#[tokio::test]
async fn mislabelled_samples_are_reported() {
    let a = sink("a").await;
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 0)])).await, 204);
    // Same series, one round with the wrong namespace.
    assert_eq!(post(&a, &[], body("ns-2", &[(0, 1)])).await, 204);
    let mut e = Expectation::new();
    e.expect(
        id(0),
        0..2,
        ["a"],
        [
            ("namespace", "ns-1"),
            ("deploymentId", "dep-1"),
            ("pod", ""),
        ],
    );
    let problems = e.check(&[a.report()]);
    assert_eq!(
        problems,
        vec![
            Problem::Mislabelled {
                target: "a".into(),
                id: id(0),
                label: "deploymentId".into(),
                expected: "dep-1".into(),
                found: None
            },
            Problem::Mislabelled {
                target: "a".into(),
                id: id(0),
                label: "namespace".into(),
                expected: "ns-1".into(),
                found: Some("ns-2".into())
            },
        ]
    );
}

#[tokio::test]
async fn malformed_requests_get_400_and_are_reported() {
    let a = sink("a").await;
    // Not snappy.
    assert_eq!(
        post(&a, &[], Bytes::from_static(b"\x05\xff\xff")).await,
        400
    );
    // Snappy of a truncated protobuf.
    let bad = fanout_proto::snappy::compress(&[0x0a, 0x20, 0x0a]);
    assert_eq!(post(&a, &[], Bytes::from(bad)).await, 400);
    let r = a.report();
    assert_eq!(r.bad_requests, 2);
    assert_eq!(r.samples, 0);
    assert!(
        r.last_error.as_deref().unwrap_or("").contains("1.0 body"),
        "{:?}",
        r.last_error
    );
    let problems = Expectation::new().check(&[r]);
    assert!(
        matches!(&problems[..], [Problem::Refused { .. }]),
        "{problems:?}"
    );
    // The sink still serves.
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 0)])).await, 204);
}

#[tokio::test]
async fn auth_and_headers_are_checked() {
    let a = Sink::start(SinkConfig {
        name: "a".into(),
        auth: Some(ExpectedAuth::Bearer("secret".into())),
        headers: vec![("X-Scope-OrgID".into(), "team-a".into())],
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let ok = [
        ("authorization", "Bearer secret"),
        ("x-scope-orgid", "team-a"),
    ];
    assert_eq!(post(&a, &ok, body("ns-1", &[(0, 0)])).await, 204);
    assert_eq!(
        post(
            &a,
            &[
                ("authorization", "Bearer nope"),
                ("x-scope-orgid", "team-a")
            ],
            body("ns-1", &[(0, 1)])
        )
        .await,
        401
    );
    assert_eq!(
        post(
            &a,
            &[("authorization", "Bearer secret")],
            body("ns-1", &[(0, 1)])
        )
        .await,
        400
    );
    let r = a.report();
    assert_eq!((r.auth_failures, r.header_mismatches, r.samples), (1, 1, 1));
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..1, &["a"], "ns-1");
    let problems = e.check(&[r]);
    assert!(
        matches!(&problems[..], [Problem::Refused { what, .. }] if what.contains("1 auth") && what.contains("1 wrong headers")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn out_of_order_arrival_is_reported_when_order_is_required() {
    let a = sink("a").await;
    // Round 3 overtakes 1 and 2 across requests; within the last request
    // round 5 comes before 4 (a request is recorded in body order); series 1
    // is in order and must not be blamed.
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 0), (1, 0)])).await, 204);
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 3), (1, 1)])).await, 204);
    assert_eq!(
        post(&a, &[], body("ns-1", &[(0, 1), (0, 2), (1, 2)])).await,
        204
    );
    assert_eq!(
        post(&a, &[], body("ns-1", &[(0, 5), (0, 4), (1, 3)])).await,
        204
    );
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..6, &["a"], "ns-1");
    expect_ns(&mut e, 1, 0..4, &["a"], "ns-1");
    // Without the order requirement delivery is exact.
    assert_eq!(e.check(&[a.report()]), vec![]);
    let problems = e.require_order().check(&[a.report()]);
    assert_eq!(
        problems,
        vec![Problem::OutOfOrder {
            target: "a".into(),
            id: id(0),
            samples: 3,
            first: Some((1, 3))
        }]
    );
}

#[tokio::test]
async fn duplicates_in_order_pass_the_order_check() {
    let a = sink("a").await;
    // A retried batch and a replayed backlog re-send rounds already
    // delivered: duplicates, reported as such, but not out of order.
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 0), (0, 1)])).await, 204);
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 1), (0, 2)])).await, 204);
    assert_eq!(
        post(&a, &[], body("ns-1", &[(0, 0), (0, 1), (0, 2)])).await,
        204
    );
    assert_eq!(post(&a, &[], body("ns-1", &[(0, 3)])).await, 204);
    let mut e = Expectation::new();
    expect_ns(&mut e, 0, 0..4, &["a"], "ns-1");
    let problems = e.require_order().check(&[a.report()]);
    assert_eq!(
        problems,
        vec![Problem::Duplicated {
            target: "a".into(),
            id: id(0),
            copies: 4,
            first_seq: Some(1)
        }]
    );
}
