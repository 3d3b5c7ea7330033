//! Scanner and encoder against prost on a realistic 2,000-series request.
//!
//! `cargo bench -p fanout-proto --bench scan`; results in `proto/README.md`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fanout_proto::encode::{Encoder, LabelSet};
use fanout_proto::scan::scan_v1;
use fanout_proto::{snappy, testdata, v1, Limits};
use prost::Message;

const SERIES: usize = 2_000;

/// The seven registry labels Fanout stamps on every exported series.
fn registry_labels() -> LabelSet {
    LabelSet::new([
        ("cloud_provider", "aws"),
        ("cloud_region", "us-east-1"),
        ("cluster_organization_id", "clorg0001"),
        ("deploymentId", "cl0003x9k2m0001deploy"),
        ("namespace", "elementary-zenith-7246"),
        ("organizationId", "clorg0001"),
        ("workspaceId", "clws0001"),
    ])
    .expect("valid labels")
}

fn bench(c: &mut Criterion) {
    let request = testdata::realistic_request(SERIES, 10);
    let body = Bytes::from(request.encode_to_vec());
    let compressed = snappy::compress(&body);
    let limits = Limits::default();
    let inject = registry_labels();
    let injected: Vec<v1::Label> = inject
        .iter()
        .map(|(n, v)| v1::Label {
            name: String::from_utf8_lossy(n).into_owned(),
            value: String::from_utf8_lossy(v).into_owned(),
        })
        .collect();
    eprintln!(
        "request: {SERIES} series, {} bytes ({} per sample), {} bytes snappy",
        body.len(),
        body.len() / SERIES,
        compressed.len()
    );

    let mut g = c.benchmark_group("write_request_2000");
    g.throughput(Throughput::Elements(SERIES as u64));

    let mut series = Vec::with_capacity(SERIES);
    g.bench_function("scan", |b| {
        b.iter(|| scan_v1(black_box(&body), &limits, &mut series).unwrap())
    });

    let mut encoder = Encoder::new();
    let mut out = BytesMut::with_capacity(body.len() * 2);
    g.bench_function("scan_encode_inject", |b| {
        b.iter(|| {
            scan_v1(black_box(&body), &limits, &mut series).unwrap();
            out.clear();
            for s in &series {
                encoder.encode_series(s.view(&body), &inject, &mut out);
            }
            black_box(out.len())
        })
    });

    g.bench_function("prost_decode", |b| {
        b.iter(|| v1::WriteRequest::decode(black_box(&body[..])).unwrap())
    });

    g.bench_function("prost_decode_encode_inject", |b| {
        b.iter(|| {
            let mut req = v1::WriteRequest::decode(black_box(&body[..])).unwrap();
            for ts in &mut req.timeseries {
                ts.labels
                    .retain(|l| inject.get(l.name.as_bytes()).is_none());
                ts.labels.extend(injected.iter().cloned());
                ts.labels.sort_by(|a, b| a.name.cmp(&b.name));
            }
            black_box(req.encode_to_vec().len())
        })
    });

    let mut buf = Vec::new();
    g.bench_function("snappy_decompress", |b| {
        b.iter(|| snappy::decompress_into(black_box(&compressed), 256 << 20, &mut buf).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
