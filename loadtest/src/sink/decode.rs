//! Request bodies to samples: a decompressed remote-write 1.0 or 2.0 body
//! becomes a [`Decoded`], its samples ([`Got`]: identity or none,
//! timestamp, label set) and label sets borrowing from the body, so that
//! recording allocates only for what is new to a series' record.
//!
//! - 1.0 of the plain shape senders use: [`scan_v1_plain`], no allocation
//!   per series or label; a series' labels are its label messages' text.
//! - Anything else in 1.0, and every malformed body: prost, whose verdict
//!   and error message stand (the scan accepts nothing prost refuses).
//! - 2.0: prost, every label reference checked against the symbols table;
//!   with `keep` each series is also resolved as a receiver stores it
//!   ([`keep_v2`]).
//!
//! Errors are the reason for a 400 answer, naming the series at fault.

use std::ops::Range;

use bytes::Bytes;
use prost::Message as _;

use super::record::V2Series;
use crate::identity::SampleId;

/// One request's samples and label sets.
#[derive(Default)]
pub(super) struct Decoded<'a> {
    /// Label pairs of the series decoded by prost ([`LabelSet::Pairs`]).
    pub(super) pairs: Vec<(&'a str, &'a str)>,
    /// Each series' label set with the hash of its bytes, in body order.
    pub(super) sets: Vec<(u64, LabelSet<'a>)>,
    /// The float samples, in body order.
    pub(super) got: Vec<Got>,
    /// Native histogram samples (counted, not identified).
    pub(super) histograms: u64,
    /// Exemplars (2.0; counted).
    pub(super) exemplars: u64,
    /// Metric family names of 1.0 `WriteRequest.metadata` entries.
    pub(super) metadata: Vec<&'a str>,
    /// With `keep`: each 2.0 series as a receiver stores it.
    pub(super) kept: Vec<(Vec<(String, String)>, V2Series)>,
}

impl Decoded<'_> {
    /// The owned pairs of label set `set` (for a set new to a record).
    pub(super) fn labels(&self, set: usize) -> Vec<(String, String)> {
        self.sets
            .get(set)
            .map(|(_, s)| s.owned(&self.pairs))
            .unwrap_or_default()
    }

    /// The hash of label set `set`'s bytes.
    pub(super) fn hash(&self, set: usize) -> u64 {
        self.sets.get(set).map_or(0, |(h, _)| *h)
    }
}

/// Decodes a remote-write 1.0 body: the plain scan, else prost into `slot`
/// (which the result borrows).
pub(super) fn decode_v1<'a>(
    raw: &'a Bytes,
    slot: &'a mut Option<fanout_proto::v1::WriteRequest>,
) -> Result<Decoded<'a>, String> {
    let mut d = Decoded::default();
    if scan_v1_plain(raw, &mut d.sets, &mut d.got).is_some() {
        return Ok(d);
    }
    // Not the plain shape (or malformed): prost decodes it, and its verdict
    // and error message stand.
    let req: &'a fanout_proto::v1::WriteRequest = slot.insert(
        fanout_proto::v1::WriteRequest::decode(raw.clone())
            .map_err(|e| format!("remote-write 1.0 body: {e}"))?,
    );
    let mut d = Decoded {
        metadata: req
            .metadata
            .iter()
            .map(|m| m.metric_family_name.as_str())
            .collect(),
        ..Decoded::default()
    };
    for ts in &req.timeseries {
        d.histograms += ts.histograms.len() as u64;
        let start = d.pairs.len();
        d.pairs.extend(
            ts.labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
        );
        for s in &ts.samples {
            d.got.push(Got::new(s.value, s.timestamp, d.sets.len()));
        }
        push_set(&mut d.sets, &d.pairs, start);
    }
    Ok(d)
}

/// Decodes a remote-write 2.0 body into `slot` (which the result borrows);
/// `keep`: also resolve every series as a receiver stores it.
pub(super) fn decode_v2<'a>(
    raw: Bytes,
    slot: &'a mut Option<fanout_proto::v2::Request>,
    keep: bool,
) -> Result<Decoded<'a>, String> {
    let r: &'a fanout_proto::v2::Request = slot.insert(
        fanout_proto::v2::Request::decode(raw)
            .map_err(|e| format!("remote-write 2.0 body: {e}"))?,
    );
    if r.symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err("symbols[0] must be the empty string".to_owned());
    }
    let mut d = Decoded::default();
    for (i, ts) in r.timeseries.iter().enumerate() {
        if ts.labels_refs.len() % 2 != 0 {
            return Err(format!("timeseries {i}: odd number of label references"));
        }
        let start = d.pairs.len();
        for p in ts.labels_refs.chunks(2) {
            let (Some(k), Some(v)) = (r.symbols.get(p[0] as usize), r.symbols.get(p[1] as usize))
            else {
                return Err(format!(
                    "timeseries {i}: label reference out of range ({} symbols)",
                    r.symbols.len()
                ));
            };
            d.pairs.push((k.as_str(), v.as_str()));
        }
        d.histograms += ts.histograms.len() as u64;
        d.exemplars += ts.exemplars.len() as u64;
        for s in &ts.samples {
            d.got.push(Got::new(s.value, s.timestamp, d.sets.len()));
        }
        if keep {
            d.kept.push(
                keep_v2(r, ts, &d.pairs[start..]).map_err(|e| format!("timeseries {i}: {e}"))?,
            );
        }
        push_set(&mut d.sets, &d.pairs, start);
    }
    Ok(d)
}

/// A decoded sample: identity (or none), timestamp, label set index in `sets`.
pub(super) struct Got {
    /// The identity, if the value is one.
    pub(super) id: Option<SampleId>,
    /// The timestamp (ms since the epoch).
    pub(super) ts: i64,
    /// Index of its label set in [`Decoded::sets`].
    pub(super) set: usize,
}

impl Got {
    fn new(value: f64, ts: i64, set: usize) -> Got {
        Got {
            id: SampleId::from_value(value),
            ts,
            set,
        }
    }
}

/// Where a series' labels are: the checked text of its encoded labels (the
/// plain 1.0 path), or `pairs[range]`.
pub(super) enum LabelSet<'a> {
    /// The series' label messages as they arrived, valid UTF-8.
    Raw(&'a str),
    /// Decoded pairs.
    Pairs(Range<usize>),
}

impl LabelSet<'_> {
    /// The labels as owned pairs (only for a label set new to a record).
    fn owned(&self, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        match self {
            LabelSet::Raw(text) => raw_pairs(text),
            LabelSet::Pairs(r) => pairs[r.clone()]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

fn fast_hash<T: std::hash::Hash + ?Sized>(h: &T) -> u64 {
    std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), h)
}

/// Ends a series whose labels are `pairs[start..]`: its label set, with the
/// hash that tells label sets apart (the hash of the `(name, value)` list).
fn push_set<'a>(sets: &mut Vec<(u64, LabelSet<'a>)>, pairs: &[(&'a str, &'a str)], start: usize) {
    sets.push((
        fast_hash(&pairs[start..]),
        LabelSet::Pairs(start..pairs.len()),
    ));
}

/// The `(name, value)` pairs of label messages checked by [`scan_v1_plain`].
fn raw_pairs(text: &str) -> Vec<(String, String)> {
    use fanout_proto::wire::Reader;
    let mut out = Vec::new();
    let mut r = Reader::new(text.as_bytes());
    while let (Ok(_), Ok((ma, mb))) = (r.key(), r.len_range()) {
        let mut m = Reader::new(&text.as_bytes()[ma..mb]);
        let (mut name, mut value) = (String::new(), String::new());
        while let (Ok((f, _)), Ok((a, b))) = (m.key(), m.len_range()) {
            let s = text
                .get(ma + a..ma + b)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&text.as_bytes()[ma + a..ma + b]).into_owned()
                });
            if f == 1 {
                name = s;
            } else {
                value = s;
            }
        }
        out.push((name, value));
    }
    out
}

/// Decodes a remote-write 1.0 body of the plain shape senders use (only
/// `timeseries`, each only `labels` {name, value} first, then `samples`
/// {value, timestamp}) without allocating per series or label: a series'
/// label messages are checked as UTF-8 in one piece and kept as that text
/// ([`LabelSet::Raw`]), parsed into pairs only when new to a record. Every
/// field must have its schema's wire type and the labels must be UTF-8, so
/// what this accepts prost accepts with the same content. `None` for any
/// other field or layout, or malformed input (the caller then decodes with
/// prost); the outputs are then partly filled.
fn scan_v1_plain<'a>(
    raw: &'a [u8],
    sets: &mut Vec<(u64, LabelSet<'a>)>,
    got: &mut Vec<Got>,
) -> Option<()> {
    use fanout_proto::wire::{Reader, WireType};
    let mut r = Reader::new(raw);
    while !r.is_empty() {
        if r.key().ok()? != (1, WireType::Len) {
            return None;
        }
        let ts = r.len_delimited().ok()?;
        let mut t = Reader::new(ts);
        let (mut head_end, mut seen_sample) = (0, false);
        while !t.is_empty() {
            let (field, wire) = t.key().ok()?;
            if wire != WireType::Len {
                return None;
            }
            let (ma, mb) = t.len_range().ok()?;
            let mut m = Reader::new(&ts[ma..mb]);
            match field {
                // A label after a sample: not the plain layout.
                1 if seen_sample => return None,
                1 => {
                    while !m.is_empty() {
                        match m.key().ok()? {
                            (1 | 2, WireType::Len) => m.len_range().ok()?,
                            _ => return None,
                        };
                    }
                    head_end = mb;
                }
                2 => {
                    seen_sample = true;
                    let (mut value, mut ts) = (0.0, 0i64);
                    while !m.is_empty() {
                        match m.key().ok()? {
                            (1, WireType::I64) => value = f64::from_bits(m.fixed64().ok()?),
                            (2, WireType::Varint) => ts = m.varint().ok()? as i64,
                            _ => return None,
                        }
                    }
                    got.push(Got::new(value, ts, sets.len()));
                }
                _ => return None,
            }
        }
        let labels = std::str::from_utf8(&ts[..head_end]).ok()?;
        sets.push((fast_hash(&labels), LabelSet::Raw(labels)));
    }
    Some(())
}

/// One 2.0 series of `r` as a receiver stores it: its sorted labels
/// (`pairs`) and everything it carried, every reference resolved.
fn keep_v2(
    r: &fanout_proto::v2::Request,
    ts: &fanout_proto::v2::TimeSeries,
    pairs: &[(&str, &str)],
) -> Result<(Vec<(String, String)>, V2Series), String> {
    let symbol = |i: u32| {
        r.symbols
            .get(i as usize)
            .cloned()
            .ok_or_else(|| format!("symbol {i} out of range ({} symbols)", r.symbols.len()))
    };
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    let mut one = V2Series {
        samples: ts.samples.iter().map(|s| (s.value, s.timestamp)).collect(),
        histograms: ts.histograms.clone(),
        ..V2Series::default()
    };
    for e in &ts.exemplars {
        if e.labels_refs.len() % 2 != 0 {
            return Err("exemplar: odd number of label references".to_owned());
        }
        let mut l = Vec::new();
        for p in e.labels_refs.chunks(2) {
            l.push((symbol(p[0])?, symbol(p[1])?));
        }
        one.exemplars.push((l, e.value, e.timestamp));
    }
    if let Some(m) = &ts.metadata {
        one.metadata
            .insert((m.r#type, symbol(m.help_ref)?, symbol(m.unit_ref)?));
    }
    if ts.created_timestamp != 0 {
        one.created_timestamps.insert(ts.created_timestamp);
    }
    Ok((labels, one))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::v1;

    /// Label pairs, samples as (identity, timestamp, set index), set count.
    type Scanned = (
        Vec<(String, String)>,
        Vec<(Option<SampleId>, i64, usize)>,
        usize,
    );

    fn scan(raw: &[u8]) -> Option<Scanned> {
        let (mut sets, mut got) = (Vec::new(), Vec::new());
        scan_v1_plain(raw, &mut sets, &mut got)?;
        Some((
            sets.iter().flat_map(|(_, s)| s.owned(&[])).collect(),
            got.iter().map(|g| (g.id, g.ts, g.set)).collect(),
            sets.len(),
        ))
    }

    #[test]
    fn plain_v1_scan_matches_prost() {
        let scenario = crate::scenario::Scenario {
            clusters: 1,
            deployments: 2,
            ..crate::scenario::Scenario::default()
        };
        let mut b = crate::generator::RequestBuilder::new(scenario).unwrap();
        let body = b.body(
            crate::generator::Protocol::V1,
            0,
            10,
            260,
            1_700_000_000_000,
        );
        let raw = fanout_proto::snappy::decompress(&body, 1 << 30).unwrap();
        let (pairs, got, sets) = scan(&raw).expect("the generator's bodies are plain");
        let req = v1::WriteRequest::decode(raw.clone()).unwrap();
        assert_eq!(sets, req.timeseries.len());
        let want_pairs: Vec<(String, String)> = req
            .timeseries
            .iter()
            .flat_map(|t| t.labels.iter().map(|l| (l.name.clone(), l.value.clone())))
            .collect();
        assert_eq!(pairs, want_pairs);
        let want_got: Vec<_> = req
            .timeseries
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                t.samples
                    .iter()
                    .map(move |s| (SampleId::from_value(s.value), s.timestamp, i))
            })
            .collect();
        assert_eq!(got, want_got);
        assert_eq!(got.len(), 250);
    }

    #[test]
    fn plain_v1_scan_leaves_the_rest_to_prost() {
        let series = |labels: Vec<v1::Label>| v1::TimeSeries {
            labels,
            samples: vec![v1::Sample {
                value: 1.0,
                timestamp: 5,
            }],
            ..Default::default()
        };
        let label = |n: &str, v: &str| v1::Label {
            name: n.into(),
            value: v.into(),
        };
        let ok = v1::WriteRequest {
            timeseries: vec![series(vec![label("__name__", "up")]), series(vec![])],
            ..Default::default()
        };
        let (pairs, got, sets) = scan(&ok.encode_to_vec()).unwrap();
        assert_eq!(pairs, [("__name__".to_owned(), "up".to_owned())]);
        assert_eq!((got.len(), sets, got[1].2), (2, 2, 1));
        // Text beyond ASCII is scanned; a value of 200 bytes (a two-byte
        // length, not UTF-8 with the text around it) is left to prost.
        let wide = v1::WriteRequest {
            timeseries: vec![series(vec![label("ns", "é中"), label("x", "ü")])],
            ..Default::default()
        };
        let (pairs, _, _) = scan(&wide.encode_to_vec()).unwrap();
        assert_eq!(pairs[0], ("ns".to_owned(), "é中".to_owned()));
        assert_eq!(pairs[1], ("x".to_owned(), "ü".to_owned()));
        let long = v1::WriteRequest {
            timeseries: vec![series(vec![label("x", &"é中".repeat(40))])],
            ..Default::default()
        };
        assert!(scan(&long.encode_to_vec()).is_none());
        // Invalid UTF-8 split across a label's end is refused too.
        let mut split = wide.encode_to_vec();
        let at = split.windows(2).position(|w| w == "é".as_bytes()).unwrap();
        split[at + 1] = b'a';
        assert!(scan(&split).is_none());
        // A label after a sample: not the plain layout.
        let mut late = v1::TimeSeries::default().encode_to_vec();
        late.extend(series(vec![]).encode_to_vec());
        late.extend(
            v1::TimeSeries {
                labels: vec![label("a", "b")],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &late, &mut body);
        assert!(scan(&body).is_none());
        let decoded = v1::WriteRequest::decode(&body[..]).unwrap();
        assert_eq!(decoded.timeseries[0].labels.len(), 1);
        // A histogram: another field; prost decodes it.
        let mut h = series(vec![label("a", "b")]);
        h.histograms.push(Default::default());
        let with_histogram = v1::WriteRequest {
            timeseries: vec![h],
            ..Default::default()
        };
        assert!(scan(&with_histogram.encode_to_vec()).is_none());
        // Invalid UTF-8 in a label value, and a truncated body: prost's call.
        let mut bad = ok.encode_to_vec();
        let at = bad.windows(2).position(|w| w == b"up").unwrap();
        bad[at] = 0xff;
        assert!(scan(&bad).is_none());
        assert!(v1::WriteRequest::decode(&bad[..]).is_err());
        let whole = ok.encode_to_vec();
        assert!(scan(&whole[..whole.len() - 1]).is_none());
    }
}
