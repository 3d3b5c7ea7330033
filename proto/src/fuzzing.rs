//! The checks behind the fuzz targets (`proto/fuzz`), kept in the library so
//! that `cargo test` runs them on the checked-in corpus (`tests/fuzz_corpus.rs`)
//! and the property tests share them.
//!
//! Each check takes arbitrary bytes, must never panic on bad input, and panics
//! only when the scanner, reader or encoder disagree with the prost decoder:
//! - whatever the scanner accepts, prost decodes, and both see the same series;
//! - re-encoding accepted series with injected labels gives what prost would:
//!   the same samples, exemplars and histograms, and the labels merged and sorted;
//! - whatever the 2.0 reader accepts, prost decodes as 2.0, and the re-emitted
//!   1.0 body scans and decodes to the same series;
//! - every 1.0 body the scanner accepts, the 2.0 writer rewrites into a 2.0
//!   body prost decodes, holding the same series (labels through the symbols
//!   table, samples, histograms, exemplars).

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::encode::{Encoder, LabelSet};
use crate::scan::{scan_v1, Series};
use crate::{snappy, v1, v2, Limits, ScanError};

/// Labels injected by the checks: one that sorts first, one last, one that
/// replaces a common sender label, and one that removes a label.
pub fn check_labels() -> LabelSet {
    LabelSet::new([
        ("__aaa", "first"),
        ("zzz_last", "last"),
        ("job", "replaced"),
        ("instance", ""),
    ])
    .expect("valid label set")
}

/// Fuzz target `scan_v1`: scan arbitrary bytes as a 1.0 body.
pub fn scan_v1_target(data: &[u8]) {
    let _ = roundtrip_v1(data, &check_labels());
}

/// Fuzz target `read_v2`: read arbitrary bytes as a 2.0 body.
pub fn read_v2_target(data: &[u8]) {
    let _ = roundtrip_v2(data);
}

/// Fuzz target `write_v2`: rewrite arbitrary bytes, taken as a 1.0 body,
/// as a 2.0 request ([`crate::v2write`]).
pub fn write_v2_target(data: &[u8]) {
    let mut out = Vec::new();
    let rewritten = crate::v2write::from_v1(data, &crate::v2write::NoMetadata, &mut out);
    // Inner messages are copied as they are, so only a body the ingest
    // scanner accepts must give a valid 2.0 one (the gateway's batches are
    // made of such series); anything else must merely not panic.
    let body = Bytes::copy_from_slice(data);
    if scan_v1(&body, &Limits::default(), &mut Vec::new()).is_err() {
        return;
    }
    let want = v1::WriteRequest::decode(data).expect("prost rejects a body the scanner accepted");
    let written = rewritten.expect("a valid 1.0 body is rewritten");
    let got = v2::Request::decode(out.as_slice()).expect("prost rejects a rewritten 2.0 body");
    assert_eq!(
        got.symbols.first().map(String::as_str),
        Some(""),
        "symbol 0"
    );
    assert_eq!(got.timeseries.len(), want.timeseries.len(), "series count");
    let symbol = |r: u32| {
        got.symbols
            .get(r as usize)
            .expect("reference in range")
            .as_str()
    };
    let pairs = |refs: &[u32]| -> Vec<(String, String)> {
        refs.chunks(2)
            .map(|p| (symbol(p[0]).to_owned(), symbol(p[1]).to_owned()))
            .collect()
    };
    let v1_pairs = |labels: &[v1::Label]| -> Vec<(String, String)> {
        labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect()
    };
    let mut counts = (0u64, 0u64, 0u64);
    for (g, w) in got.timeseries.iter().zip(&want.timeseries) {
        assert_eq!(pairs(&g.labels_refs), v1_pairs(&w.labels), "labels");
        let got_samples: Vec<(u64, i64)> = g
            .samples
            .iter()
            .map(|s| (s.value.to_bits(), s.timestamp))
            .collect();
        let want_samples: Vec<(u64, i64)> = w
            .samples
            .iter()
            .map(|s| (s.value.to_bits(), s.timestamp))
            .collect();
        assert_eq!(got_samples, want_samples, "samples");
        assert_eq!(g.histograms.len(), w.histograms.len(), "histograms");
        // Copied as bytes: the same field numbers in both versions.
        for (gh, wh) in g.histograms.iter().zip(&w.histograms) {
            assert_eq!(gh.encode_to_vec(), wh.encode_to_vec(), "histogram");
        }
        assert_eq!(g.exemplars.len(), w.exemplars.len(), "exemplars");
        for (ge, we) in g.exemplars.iter().zip(&w.exemplars) {
            assert_eq!(
                pairs(&ge.labels_refs),
                v1_pairs(&we.labels),
                "exemplar labels"
            );
        }
        counts.0 += g.samples.len() as u64;
        counts.1 += g.histograms.len() as u64;
        counts.2 += g.exemplars.len() as u64;
    }
    assert_eq!(
        (written.samples, written.histograms, written.exemplars),
        counts,
        "written counts"
    );
}

/// Fuzz target `snappy_scan`: decompress arbitrary bytes (at most 1 MiB), then scan.
pub fn snappy_scan_target(data: &[u8]) {
    if let Ok(body) = snappy::decompress(data, 1 << 20) {
        let _ = roundtrip_v1(&body, &check_labels());
    }
}

/// Scans `data`; if it is accepted, checks it against prost and checks the
/// encoder's output with `inject` stamped on. Returns the scanner's verdict.
pub fn roundtrip_v1(data: &[u8], inject: &LabelSet) -> Result<Vec<Series>, ScanError> {
    let body = Bytes::copy_from_slice(data);
    let mut series = Vec::new();
    let summary = scan_v1(&body, &Limits::default(), &mut series)?;
    let decoded =
        v1::WriteRequest::decode(data).expect("prost rejects a body the scanner accepted");
    assert_eq!(decoded.timeseries.len(), series.len(), "series count");
    assert_eq!(decoded.metadata.len(), summary.metadata, "metadata count");

    let mut encoder = Encoder::new();
    let mut out = BytesMut::new();
    for (s, want) in series.iter().zip(&decoded.timeseries) {
        let view = s.view(&body);
        let labels: Vec<(&[u8], &[u8])> = view.labels().map(|l| (l.name, l.value)).collect();
        let want_labels: Vec<(&[u8], &[u8])> = want
            .labels
            .iter()
            .map(|l| (l.name.as_bytes(), l.value.as_bytes()))
            .collect();
        assert_eq!(labels, want_labels, "borrowed labels differ from prost's");
        assert_eq!(s.samples(), want.samples.len(), "sample count");
        assert_eq!(s.exemplars(), want.exemplars.len(), "exemplar count");
        assert_eq!(s.histograms(), want.histograms.len(), "histogram count");
        encoder.encode_series(view, inject, &mut out);
    }

    let reencoded = v1::WriteRequest::decode(&out[..]).expect("prost rejects the encoder's output");
    assert_eq!(reencoded.timeseries.len(), decoded.timeseries.len());
    for (got, orig) in reencoded.timeseries.iter().zip(&decoded.timeseries) {
        assert_eq!(
            got.labels,
            expected_labels(&orig.labels, inject),
            "stamped labels"
        );
        assert_eq!(
            payload(got),
            payload(orig),
            "samples, exemplars and histograms"
        );
    }
    // The encoder's output is itself a valid body for the scanner.
    let mut again = Vec::new();
    scan_v1(&out.freeze(), &Limits::default(), &mut again).expect("scanner rejects encoder output");
    Ok(series)
}

/// The wire form of a series without its labels: compares samples, exemplars
/// and histograms bit for bit (NaN stale markers included).
fn payload(series: &v1::TimeSeries) -> Vec<u8> {
    v1::TimeSeries {
        labels: Vec::new(),
        ..series.clone()
    }
    .encode_to_vec()
}

/// The labels a series must carry after stamping: the sender's, minus the
/// injected names, plus the injected labels with a value, sorted by name.
pub fn expected_labels(sender: &[v1::Label], inject: &LabelSet) -> Vec<v1::Label> {
    let mut labels: Vec<v1::Label> = sender
        .iter()
        .filter(|l| inject.get(l.name.as_bytes()).is_none())
        .cloned()
        .collect();
    for (name, value) in inject.iter() {
        if !value.is_empty() {
            labels.push(v1::Label {
                name: String::from_utf8_lossy(name).into_owned(),
                value: String::from_utf8_lossy(value).into_owned(),
            });
        }
    }
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

/// Reads `data` as 2.0; if accepted, checks it against prost's 2.0 decoding
/// and checks that the 1.0 output scans and carries the same series.
pub fn roundtrip_v2(data: &[u8]) -> Result<(), ScanError> {
    let (v1_body, summary) = crate::v2read::to_v1(data, &Limits::default(), usize::MAX)?;
    let decoded = v2::Request::decode(data).expect("prost rejects a 2.0 body the reader accepted");
    let mut series = Vec::new();
    let scanned =
        scan_v1(&v1_body, &Limits::default(), &mut series).expect("reader output does not scan");
    assert_eq!(scanned.series, decoded.timeseries.len());
    assert_eq!(summary.series, decoded.timeseries.len());
    let out = v1::WriteRequest::decode(&v1_body[..]).expect("prost rejects the reader's output");
    let sym = |r: u32| decoded.symbols[r as usize].clone();
    let mut samples = 0;
    for (got, want) in out.timeseries.iter().zip(&decoded.timeseries) {
        let labels: Vec<v1::Label> = want
            .labels_refs
            .chunks_exact(2)
            .map(|p| v1::Label {
                name: sym(p[0]),
                value: sym(p[1]),
            })
            .collect();
        assert_eq!(got.labels, labels, "2.0 labels");
        let want_samples: Vec<v1::Sample> = want
            .samples
            .iter()
            .map(|s| v1::Sample {
                value: s.value,
                timestamp: s.timestamp,
            })
            .collect();
        // NaN payloads compare unequal; compare bit patterns.
        let bits = |v: &[v1::Sample]| {
            v.iter()
                .map(|s| (s.value.to_bits(), s.timestamp))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&got.samples), bits(&want_samples), "2.0 samples");
        assert_eq!(
            got.histograms.len(),
            want.histograms.len(),
            "2.0 histograms"
        );
        assert_eq!(got.exemplars.len(), want.exemplars.len(), "2.0 exemplars");
        for (ge, we) in got.exemplars.iter().zip(&want.exemplars) {
            let labels: Vec<v1::Label> = we
                .labels_refs
                .chunks_exact(2)
                .map(|p| v1::Label {
                    name: sym(p[0]),
                    value: sym(p[1]),
                })
                .collect();
            assert_eq!(ge.labels, labels, "2.0 exemplar labels");
            assert_eq!(ge.timestamp, we.timestamp, "2.0 exemplar timestamp");
        }
        samples += want.samples.len();
    }
    assert_eq!(summary.samples, samples, "2.0 sample count");
    Ok(())
}
