//! Property tests: the zero-copy scanner and the encoder against the prost
//! decoder on random, valid requests (1.0 and 2.0).
//!
//! For every random request: the scanner accepts it and sees what prost sees;
//! re-encoding with random injected labels gives, per series, exactly the
//! sender's labels minus the replaced ones plus the injected ones, sorted, and
//! the samples, exemplars and histograms bit for bit. The checks themselves are
//! in `fanout_proto::fuzzing`, shared with the fuzz targets.

use fanout_proto::encode::LabelSet;
use fanout_proto::fuzzing::{roundtrip_v1, roundtrip_v2};
use fanout_proto::{v1, v2};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message;

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("__name__".to_owned()),
        Just("job".to_owned()),
        Just("instance".to_owned()),
        Just("namespace".to_owned()),
        Just("deploymentId".to_owned()),
        "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9-]{1,20}", "\\PC{0,8}"]
}

fn labels() -> impl Strategy<Value = Vec<v1::Label>> {
    (
        btree_map(label_name(), label_value(), 0..12),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(map, shuffle, seed)| {
            let mut labels: Vec<v1::Label> = map
                .into_iter()
                .map(|(name, value)| v1::Label { name, value })
                .collect();
            if shuffle && labels.len() > 1 {
                // Some senders do not sort; rotate by a random amount.
                let k = (seed as usize) % labels.len();
                labels.rotate_left(k);
            }
            labels
        })
}

fn sample() -> impl Strategy<Value = v1::Sample> {
    (any::<f64>(), any::<i64>()).prop_map(|(value, timestamp)| v1::Sample { value, timestamp })
}

fn exemplar() -> impl Strategy<Value = v1::Exemplar> {
    (
        btree_map("[a-z_]{1,8}", "[a-f0-9]{0,16}", 0..3),
        any::<f64>(),
        any::<i64>(),
    )
        .prop_map(|(labels, value, timestamp)| v1::Exemplar {
            labels: labels
                .into_iter()
                .map(|(name, value)| v1::Label { name, value })
                .collect(),
            value,
            timestamp,
        })
}

fn histogram() -> impl Strategy<Value = v1::Histogram> {
    (
        any::<u64>(),
        any::<f64>(),
        -4i32..8,
        vec(any::<i64>(), 0..5),
        vec(any::<f64>(), 0..3),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(
            |(count, sum, schema, deltas, counts, timestamp, float)| v1::Histogram {
                count: Some(if float {
                    v1::histogram::Count::CountFloat(count as f64)
                } else {
                    v1::histogram::Count::CountInt(count)
                }),
                sum,
                schema,
                zero_threshold: 1e-128,
                zero_count: Some(v1::histogram::ZeroCount::ZeroCountInt(1)),
                positive_spans: vec![v1::BucketSpan {
                    offset: -2,
                    length: deltas.len() as u32,
                }],
                positive_deltas: deltas,
                negative_counts: counts,
                reset_hint: 2,
                timestamp,
                ..Default::default()
            },
        )
}

fn series() -> impl Strategy<Value = v1::TimeSeries> {
    (
        labels(),
        vec(sample(), 0..4),
        vec(exemplar(), 0..2),
        vec(histogram(), 0..2),
    )
        .prop_map(|(labels, samples, exemplars, histograms)| v1::TimeSeries {
            labels,
            samples,
            exemplars,
            histograms,
        })
}

fn metadata() -> impl Strategy<Value = v1::MetricMetadata> {
    (0i32..8, "[a-z_]{1,10}", "\\PC{0,20}", "[a-z]{0,6}").prop_map(|(t, name, help, unit)| {
        v1::MetricMetadata {
            r#type: t,
            metric_family_name: name,
            help,
            unit,
        }
    })
}

fn inject() -> impl Strategy<Value = LabelSet> {
    btree_map(label_name(), label_value(), 0..9)
        .prop_map(|m| LabelSet::new(m).expect("unique names"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn v1_scan_and_encode_match_prost(
        timeseries in vec(series(), 0..20),
        metadata in vec(metadata(), 0..3),
        inject in inject(),
    ) {
        let body = v1::WriteRequest { timeseries, metadata }.encode_to_vec();
        let series = roundtrip_v1(&body, &inject).expect("valid request refused");
        prop_assert_eq!(series.len(), v1::WriteRequest::decode(&body[..]).unwrap().timeseries.len());
    }

    #[test]
    fn v2_read_matches_prost(
        names in btree_map("[a-z_]{1,8}", "[a-z0-9]{0,8}", 1..8),
        count in 0usize..10,
        with_exemplar in any::<bool>(),
        samples in vec(sample(), 0..3),
    ) {
        // Symbol table: "" first, then every name and value once.
        let mut symbols = vec![String::new()];
        let mut refs = Vec::new();
        for (n, v) in &names {
            for s in [n, v] {
                let i = symbols.iter().position(|x| x == s).unwrap_or_else(|| {
                    symbols.push(s.clone());
                    symbols.len() - 1
                });
                refs.push(i as u32);
            }
        }
        let timeseries = (0..count)
            .map(|i| v2::TimeSeries {
                labels_refs: refs.clone(),
                samples: samples
                    .iter()
                    .map(|s| v2::Sample { value: s.value, timestamp: s.timestamp + i as i64 })
                    .collect(),
                exemplars: if with_exemplar {
                    vec![v2::Exemplar { labels_refs: refs[..2].to_vec(), value: 1.5, timestamp: 7 }]
                } else {
                    Vec::new()
                },
                metadata: Some(v2::Metadata { r#type: 1, help_ref: 0, unit_ref: 0 }),
                created_timestamp: 12,
                histograms: Vec::new(),
            })
            .collect();
        let body = v2::Request { symbols, timeseries }.encode_to_vec();
        prop_assert!(roundtrip_v2(&body).is_ok(), "{:?}", roundtrip_v2(&body));
    }
}

#[test]
fn label_injection_replaces_removes_and_sorts() {
    let body = v1::WriteRequest {
        timeseries: vec![v1::TimeSeries {
            labels: vec![
                v1::Label {
                    name: "namespace".into(),
                    value: "spoofed".into(),
                },
                v1::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                },
                v1::Label {
                    name: "pod".into(),
                    value: "p-1".into(),
                },
            ],
            samples: vec![v1::Sample {
                value: f64::NAN,
                timestamp: 5,
            }],
            ..Default::default()
        }],
        metadata: Vec::new(),
    }
    .encode_to_vec();
    let inject = LabelSet::new([
        ("namespace", "real-ns"),
        ("deploymentId", "dep-1"),
        ("pod", ""),
    ])
    .unwrap();
    roundtrip_v1(&body, &inject).expect("valid");

    // And the exact result, spelled out once.
    let bytes = bytes::Bytes::from(body);
    let mut series = Vec::new();
    fanout_proto::scan::scan_v1(&bytes, &Default::default(), &mut series).unwrap();
    let mut enc = fanout_proto::encode::Encoder::new();
    let record = enc.encode_series_to_bytes(series[0].view(&bytes), &inject);
    let got = v1::WriteRequest::decode(&record[..]).unwrap();
    let names: Vec<(&str, &str)> = got.timeseries[0]
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("__name__", "up"),
            ("deploymentId", "dep-1"),
            ("namespace", "real-ns")
        ]
    );
    assert!(got.timeseries[0].samples[0].value.is_nan());
}
