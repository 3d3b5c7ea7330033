//! Writer of remote-write 2.0 `io.prometheus.write.v2.Request` bodies from
//! 1.0 `WriteRequest` bodies, for targets with `protocol: V2`.
//!
//! # Design
//! The delivery engine builds every batch once, as 1.0, shared by all the
//! targets of a group; a 2.0 target's batch is rewritten from those bytes
//! when it is sent. One pass over the 1.0 body, nothing decoded into
//! structs:
//! - each label name and value becomes a reference into the request's
//!   symbol table, interned by its bytes (symbol 0 is the empty string, as
//!   2.0 requires);
//! - samples are copied verbatim (the same message in both versions, 1.0
//!   field 2 → 2.0 field 2), and so are native histograms (the same field
//!   numbers; 1.0 field 4 → 2.0 field 3);
//! - exemplars get their labels turned into references, value and
//!   timestamp copied;
//! - a created timestamp (field 6 of the gateway's 1.0 series, see
//!   [`crate::v2read`]) becomes the series' `created_timestamp`;
//! - the metadata of a series' metric family, when the caller knows it
//!   ([`MetadataLookup`]; 1.0 carries it per request, not per series),
//!   becomes the series' `Metadata` with help and unit as symbols.
//!
//! The series are written first into a scratch buffer, since the symbol table
//! (field 4) is complete only at the end; the output is then the symbols
//! followed by the series. Field order does not matter to protobuf readers.
//! Inner messages (samples, histograms, exemplar values) are copied as they
//! are: a body the ingest scanner accepts gives a valid 2.0 one (fuzz target
//! `write_v2`), and the gateway's batches are made of such series.
//! The returned [`Written`] counts what the request carries: what a 2.0
//! receiver's `X-Prometheus-Remote-Write-*-Written` headers are checked
//! against.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use crate::error::ErrorKind;
use crate::v2read::CREATED_TIMESTAMP_FIELD;
use crate::wire::{put_len_prefix, put_varint, varint_len, Reader, WireType};

/// What a 2.0 request holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Float samples.
    pub samples: u64,
    /// Native histogram samples.
    pub histograms: u64,
    /// Exemplars.
    pub exemplars: u64,
}

/// A metric family's metadata, as 1.0 `MetricMetadata` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyMetadata {
    /// The metric type (the same numbers in 1.0 and 2.0: 1 counter, 2 gauge,
    /// 3 histogram, 4 gauge histogram, 5 summary, 6 info, 7 stateset).
    pub kind: i32,
    /// Help text.
    pub help: String,
    /// Unit.
    pub unit: String,
}

/// Finds the metadata of the metric family of a series named `name`.
pub trait MetadataLookup {
    /// The metadata of `name`'s family, if known.
    fn family_of(&self, name: &[u8]) -> Option<FamilyMetadata>;
    /// Whether any family is known (else the rewrite looks nothing up).
    fn knows_any(&self) -> bool {
        true
    }
}

/// No metadata known.
pub struct NoMetadata;

impl MetadataLookup for NoMetadata {
    fn family_of(&self, _: &[u8]) -> Option<FamilyMetadata> {
        None
    }

    fn knows_any(&self) -> bool {
        false
    }
}

/// The symbol table of one request: symbols in number order, and the
/// numbers of those borrowed from the body and of those owned (metadata
/// strings from the lookup).
struct Symbols<'a> {
    list: Vec<Cow<'a, [u8]>>,
    borrowed: HashMap<&'a [u8], u32, foldhash::fast::RandomState>,
    owned: HashMap<Vec<u8>, u32, foldhash::fast::RandomState>,
}

impl<'a> Symbols<'a> {
    fn new() -> Symbols<'a> {
        let mut s = Symbols {
            list: Vec::new(),
            borrowed: HashMap::default(),
            owned: HashMap::default(),
        };
        let _ = s.intern(b"");
        s
    }

    fn known(&self, sym: &[u8]) -> Option<u32> {
        match self.borrowed.get(sym) {
            Some(&i) => Some(i),
            None if self.owned.is_empty() => None,
            None => self.owned.get(sym).copied(),
        }
    }

    /// The number of `sym`; a new symbol must be UTF-8 (2.0 symbols are
    /// strings: a receiver refuses the whole request otherwise).
    fn intern(&mut self, sym: &'a [u8]) -> Result<u32, ErrorKind> {
        if let Some(i) = self.known(sym) {
            return Ok(i);
        }
        std::str::from_utf8(sym).map_err(|_| ErrorKind::InvalidUtf8String)?;
        let i = self.list.len() as u32;
        self.list.push(Cow::Borrowed(sym));
        self.borrowed.insert(sym, i);
        Ok(i)
    }

    fn intern_owned(&mut self, sym: String) -> u32 {
        self.known(sym.as_bytes()).unwrap_or_else(|| {
            let i = self.list.len() as u32;
            let sym = sym.into_bytes();
            self.list.push(Cow::Owned(sym.clone()));
            self.owned.insert(sym, i);
            i
        })
    }
}

/// Rewrites the decompressed 1.0 body `v1` as a 2.0 request into `out`
/// (cleared first). A body that is not a valid 1.0 request is an error.
pub fn from_v1(
    v1: &[u8],
    metadata: &dyn MetadataLookup,
    out: &mut Vec<u8>,
) -> Result<Written, ErrorKind> {
    let mut symbols = Symbols::new();
    let mut series = Vec::with_capacity(v1.len());
    let mut one = Vec::new();
    let mut refs: Vec<u32> = Vec::new();
    // Each family's `Metadata` message, looked up and encoded once per
    // request (its series share it): name → its bytes in `meta_msgs`.
    let mut families: HashMap<&[u8], Option<Range<usize>>, foldhash::fast::RandomState> =
        HashMap::default();
    let mut meta_msgs = Vec::new();
    let lookup = metadata.knows_any();
    let mut written = Written::default();
    let mut r = Reader::new(v1);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        if field != 1 || wire != WireType::Len {
            // Request-level metadata (field 3) and anything else: not part
            // of a 2.0 request (metadata goes per series, by lookup).
            r.skip(wire)?;
            continue;
        }
        let ts = r.len_delimited()?;
        one.clear();
        refs.clear();
        let mut name: Option<&[u8]> = None;
        // Labels first (references), then samples, histograms, exemplars
        // in their 2.0 field numbers.
        let mut t = Reader::new(ts);
        while !t.is_empty() {
            let (field, wire) = t.key()?;
            if field == 1 && wire == WireType::Len {
                let (n, v) = label(t.len_delimited()?)?;
                if n == b"__name__" {
                    name = Some(v);
                }
                refs.push(symbols.intern(n)?);
                refs.push(symbols.intern(v)?);
            } else {
                t.skip(wire)?;
            }
        }
        put_packed(&mut one, 1, &refs);
        let mut t = Reader::new(ts);
        while !t.is_empty() {
            let (field, wire) = t.key()?;
            match (field, wire) {
                (2, WireType::Len) => {
                    let m = t.len_delimited()?;
                    put_len_prefix(&mut one, 2, m.len());
                    one.extend_from_slice(m);
                    written.samples += 1;
                }
                (3, WireType::Len) => {
                    exemplar(t.len_delimited()?, &mut symbols, &mut refs, &mut one)?;
                    written.exemplars += 1;
                }
                (4, WireType::Len) => {
                    let m = t.len_delimited()?;
                    put_len_prefix(&mut one, 3, m.len());
                    one.extend_from_slice(m);
                    written.histograms += 1;
                }
                (CREATED_TIMESTAMP_FIELD, WireType::Varint) => {
                    put_varint(&mut one, u64::from(CREATED_TIMESTAMP_FIELD) << 3);
                    put_varint(&mut one, t.varint()?);
                }
                _ => t.skip(wire)?,
            }
        }
        if let Some(n) = name.filter(|_| lookup) {
            let msg = match families.get(n) {
                Some(known) => known.clone(),
                None => {
                    let made = metadata.family_of(n).map(|meta| {
                        let start = meta_msgs.len();
                        if meta.kind != 0 {
                            put_varint(&mut meta_msgs, 1 << 3);
                            put_varint(&mut meta_msgs, meta.kind as u64);
                        }
                        for (field, text) in [(3u64, meta.help), (4, meta.unit)] {
                            if text.is_empty() {
                                continue;
                            }
                            let id = symbols.intern_owned(text);
                            put_varint(&mut meta_msgs, field << 3);
                            put_varint(&mut meta_msgs, u64::from(id));
                        }
                        start..meta_msgs.len()
                    });
                    families.insert(n, made.clone());
                    made
                }
            };
            if let Some(range) = msg {
                put_len_prefix(&mut one, 5, range.len());
                one.extend_from_slice(&meta_msgs[range]);
            }
        }
        put_len_prefix(&mut series, 5, one.len());
        series.extend_from_slice(&one);
    }
    out.clear();
    out.reserve(series.len() + 64);
    for sym in &symbols.list {
        put_len_prefix(out, 4, sym.len());
        out.extend_from_slice(sym);
    }
    out.extend_from_slice(&series);
    Ok(written)
}

/// A 1.0 `Label`'s name and value.
fn label(m: &[u8]) -> Result<(&[u8], &[u8]), ErrorKind> {
    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
    let mut r = Reader::new(m);
    while !r.is_empty() {
        match r.key()? {
            (1, WireType::Len) => name = r.len_delimited()?,
            (2, WireType::Len) => value = r.len_delimited()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((name, value))
}

/// Rewrites a 1.0 `Exemplar` (labels, value, timestamp) as 2.0 field 4.
fn exemplar<'a>(
    m: &'a [u8],
    symbols: &mut Symbols<'a>,
    refs: &mut Vec<u32>,
    out: &mut Vec<u8>,
) -> Result<(), ErrorKind> {
    refs.clear();
    let mut rest = Vec::new();
    let mut r = Reader::new(m);
    while !r.is_empty() {
        let start = r.pos();
        let (field, wire) = r.key()?;
        if field == 1 && wire == WireType::Len {
            let (n, v) = label(r.len_delimited()?)?;
            refs.push(symbols.intern(n)?);
            refs.push(symbols.intern(v)?);
        } else {
            // Value (2, double) and timestamp (3, int64): the same numbers.
            r.skip(wire)?;
            rest.extend_from_slice(&m[start..r.pos()]);
        }
    }
    let mut e = Vec::with_capacity(rest.len() + refs.len() * 2 + 4);
    put_packed(&mut e, 1, refs);
    e.extend_from_slice(&rest);
    put_len_prefix(out, 4, e.len());
    out.extend_from_slice(&e);
    Ok(())
}

/// Appends `values` as a packed repeated uint32 field (nothing when empty).
fn put_packed(out: &mut Vec<u8>, field: u32, values: &[u32]) {
    if values.is_empty() {
        return;
    }
    let len: usize = values.iter().map(|&v| varint_len(u64::from(v))).sum();
    put_len_prefix(out, field, len);
    for &v in values {
        put_varint(out, u64::from(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{v1, v2};
    use prost::Message;

    fn l(name: &str, value: &str) -> v1::Label {
        v1::Label {
            name: name.into(),
            value: value.into(),
        }
    }

    struct Families;

    impl MetadataLookup for Families {
        fn family_of(&self, name: &[u8]) -> Option<FamilyMetadata> {
            (name == b"http_requests_total").then(|| FamilyMetadata {
                kind: 1,
                help: "Requests served.".into(),
                unit: String::new(),
            })
        }
    }

    #[test]
    fn a_v1_request_becomes_the_same_v2_request() {
        let req = v1::WriteRequest {
            timeseries: vec![
                v1::TimeSeries {
                    labels: vec![
                        l("__name__", "http_requests_total"),
                        l("deploymentId", "d1"),
                        l("job", "api"),
                    ],
                    samples: vec![
                        v1::Sample {
                            value: 1.5,
                            timestamp: 1_700_000_000_000,
                        },
                        v1::Sample {
                            value: 2.0,
                            timestamp: 1_700_000_015_000,
                        },
                    ],
                    exemplars: vec![v1::Exemplar {
                        labels: vec![l("trace_id", "abc")],
                        value: 0.25,
                        timestamp: 1_700_000_000_001,
                    }],
                    histograms: vec![],
                },
                v1::TimeSeries {
                    labels: vec![l("__name__", "latency"), l("job", "api")],
                    samples: vec![],
                    exemplars: vec![],
                    histograms: vec![v1::Histogram {
                        count: Some(v1::histogram::Count::CountInt(3)),
                        sum: 1.25,
                        schema: 1,
                        zero_threshold: 0.001,
                        zero_count: Some(v1::histogram::ZeroCount::ZeroCountInt(1)),
                        positive_spans: vec![v1::BucketSpan {
                            offset: 0,
                            length: 2,
                        }],
                        positive_deltas: vec![1, 0],
                        timestamp: 1_700_000_000_000,
                        ..Default::default()
                    }],
                },
            ],
            metadata: vec![],
        };
        let mut out = Vec::new();
        let written = from_v1(&req.encode_to_vec(), &Families, &mut out).unwrap();
        assert_eq!(
            written,
            Written {
                samples: 2,
                histograms: 1,
                exemplars: 1
            }
        );
        let got = v2::Request::decode(out.as_slice()).unwrap();
        assert_eq!(got.symbols[0], "");
        let labels = |refs: &[u32]| -> Vec<(String, String)> {
            refs.chunks(2)
                .map(|p| {
                    (
                        got.symbols[p[0] as usize].clone(),
                        got.symbols[p[1] as usize].clone(),
                    )
                })
                .collect()
        };
        for (want, have) in req.timeseries.iter().zip(&got.timeseries) {
            let want_labels: Vec<(String, String)> = want
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            assert_eq!(labels(&have.labels_refs), want_labels);
            let samples: Vec<(f64, i64)> = have
                .samples
                .iter()
                .map(|s| (s.value, s.timestamp))
                .collect();
            let want_samples: Vec<(f64, i64)> = want
                .samples
                .iter()
                .map(|s| (s.value, s.timestamp))
                .collect();
            assert_eq!(samples, want_samples);
            assert_eq!(have.histograms.len(), want.histograms.len());
            // Histograms are copied as bytes: they decode to the same values.
            for (h, w) in have.histograms.iter().zip(&want.histograms) {
                assert_eq!(h.encode_to_vec(), w.encode_to_vec());
            }
            assert_eq!(have.exemplars.len(), want.exemplars.len());
            for (e, w) in have.exemplars.iter().zip(&want.exemplars) {
                assert_eq!(
                    labels(&e.labels_refs),
                    vec![("trace_id".into(), "abc".into())]
                );
                assert_eq!((e.value, e.timestamp), (w.value, w.timestamp));
            }
        }
        // The family's metadata on its series, help as a symbol.
        let meta = got.timeseries[0].metadata.as_ref().expect("metadata");
        assert_eq!(meta.r#type, 1);
        assert_eq!(got.symbols[meta.help_ref as usize], "Requests served.");
        assert_eq!(meta.unit_ref, 0);
        assert!(got.timeseries[1].metadata.is_none());
        // Each symbol once.
        let mut seen = std::collections::HashSet::new();
        assert!(got.symbols.iter().all(|s| seen.insert(s)));
    }

    /// 2.0 → the gateway's 1.0 → 2.0 keeps each series' created timestamp
    /// (a zero one is absent both ways); a 1.0 reader sees the same series.
    #[test]
    fn created_timestamps_survive_the_round_trip_through_1_0() {
        let req = v2::Request {
            symbols: vec!["".into(), "__name__".into(), "c_total".into(), "g".into()],
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2],
                    samples: vec![v2::Sample {
                        value: 3.0,
                        timestamp: 1_700_000_000_000,
                    }],
                    created_timestamp: 1_699_999_000_000,
                    ..Default::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 3],
                    samples: vec![v2::Sample {
                        value: 1.0,
                        timestamp: 1_700_000_000_000,
                    }],
                    ..Default::default()
                },
            ],
        };
        let (v1_body, _) =
            crate::v2read::to_v1(&req.encode_to_vec(), &crate::Limits::default(), 1 << 20).unwrap();
        let as_v1 = v1::WriteRequest::decode(&v1_body[..]).unwrap();
        assert_eq!(as_v1.timeseries.len(), 2);
        assert_eq!(as_v1.timeseries[0].samples.len(), 1);
        let mut out = Vec::new();
        from_v1(&v1_body, &NoMetadata, &mut out).unwrap();
        let got = v2::Request::decode(out.as_slice()).unwrap();
        let created: Vec<i64> = got.timeseries.iter().map(|t| t.created_timestamp).collect();
        assert_eq!(created, [1_699_999_000_000, 0]);
    }

    #[test]
    fn a_body_that_is_not_v1_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        // Truncated, a length past the end, a bad key, a label that is not UTF-8.
        for bad in [
            &b"\x0a\xff"[..],
            b"\x0a\x03\x0a\x05abc",
            b"\x0b",
            b"\x0a\x05\x0a\x03\x0a\x01\xff",
        ] {
            assert!(from_v1(bad, &NoMetadata, &mut out).is_err(), "{bad:?}");
        }
        assert_eq!(from_v1(b"", &NoMetadata, &mut out), Ok(Written::default()));
        assert_eq!(v2::Request::decode(out.as_slice()).unwrap().symbols, [""]);
    }
}
