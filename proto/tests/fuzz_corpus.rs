//! Runs every file of the fuzz corpus (`fuzz/corpus/<target>/`) through its
//! target's checks once, so fuzz findings stay fixed under plain `cargo test`.
//!
//! `FANOUT_REGENERATE=1 cargo test -p fanout-proto --test fuzz_corpus` rewrites
//! the seed files (`seed-*`); other files (fuzzer findings) are kept.

use std::path::{Path, PathBuf};

use fanout_proto::fuzzing::{read_v2_target, scan_v1_target, snappy_scan_target, write_v2_target};
use fanout_proto::{snappy, testdata, v1, v2};
use prost::Message;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn run(target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    n
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let v1_body = testdata::realistic_request(8, 2).encode_to_vec();
    let v2_body = v2::Request {
        symbols: vec![
            "".into(),
            "__name__".into(),
            "up".into(),
            "job".into(),
            "x".into(),
        ],
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample {
                value: 1.0,
                timestamp: 5,
            }],
            exemplars: vec![v2::Exemplar {
                labels_refs: vec![3, 4],
                value: 2.0,
                timestamp: 6,
            }],
            metadata: Some(v2::Metadata {
                r#type: 2,
                help_ref: 4,
                unit_ref: 0,
            }),
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let with_histogram = v1::WriteRequest {
        timeseries: vec![v1::TimeSeries {
            labels: vec![v1::Label {
                name: "__name__".into(),
                value: "h".into(),
            }],
            histograms: vec![v1::Histogram {
                count: Some(v1::histogram::Count::CountInt(3)),
                positive_spans: vec![v1::BucketSpan {
                    offset: 0,
                    length: 2,
                }],
                positive_deltas: vec![1, 1],
                ..Default::default()
            }],
            ..Default::default()
        }],
        metadata: vec![v1::MetricMetadata {
            r#type: 3,
            metric_family_name: "h".into(),
            help: "a histogram".into(),
            unit: String::new(),
        }],
    }
    .encode_to_vec();
    let mut truncated = v1_body.clone();
    truncated.truncate(v1_body.len() / 2);
    vec![
        ("scan_v1", "seed-realistic", v1_body.clone()),
        ("scan_v1", "seed-histogram", with_histogram.clone()),
        ("scan_v1", "seed-truncated", truncated),
        ("scan_v1", "seed-empty", Vec::new()),
        ("read_v2", "seed-basic", v2_body.clone()),
        ("read_v2", "seed-v1-body", v1_body.clone()),
        ("write_v2", "seed-realistic", v1_body.clone()),
        ("write_v2", "seed-histogram", with_histogram.clone()),
        ("snappy_scan", "seed-realistic", snappy::compress(&v1_body)),
        (
            "snappy_scan",
            "seed-bomb-header",
            vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
        ),
    ]
}

#[test]
fn corpus_regressions() {
    if std::env::var_os("FANOUT_REGENERATE").is_some() {
        for (target, name, data) in seeds() {
            std::fs::create_dir_all(corpus(target)).expect("corpus dir");
            std::fs::write(corpus(target).join(name), data).expect("write seed");
        }
    }
    assert!(run("scan_v1", scan_v1_target) >= 4);
    assert!(run("read_v2", read_v2_target) >= 2);
    assert!(run("write_v2", write_v2_target) >= 2);
    assert!(run("snappy_scan", snappy_scan_target) >= 2);
}
