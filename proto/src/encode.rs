//! Batch encoder: writes remote-write 1.0 `TimeSeries` records from scanned
//! series, with labels inserted or replaced, without decoding samples.
//!
//! # Design
//! A 1.0 `WriteRequest` holding only series is the concatenation of its
//! `timeseries` fields (key `0x0a`, length, `TimeSeries` message). So the
//! encoder writes one such record per series, and a batch for a target is just
//! those records appended one after another: a record encoded once can be
//! shared (as `Bytes`) by every target that needs the same label variant.
//!
//! For one series the encoder:
//! 1. collects the byte ranges of its label fields into a reused scratch
//!    vector (no allocation once warm), sorting them by name only when the
//!    scan found them unsorted;
//! 2. merges them with the [`LabelSet`] to inject (already sorted, each entry
//!    pre-encoded): an injected name replaces the sender's label of that name,
//!    an injected empty value removes it;
//! 3. writes the key and the exact length, the merged label fields (the
//!    sender's copied byte for byte), then every other field of the series
//!    (samples, exemplars, histograms, unknown fields) copied verbatim in wire
//!    order.
//!
//! Nothing is decoded or re-encoded except the length prefix.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use std::cmp::Ordering;

use crate::scan::{cmp_names, SeriesView};
use crate::wire::{len_field_size, put_len_prefix, put_varint, Reader, WireType};

/// A set of labels to stamp on series: sorted by name, names unique, each
/// label pre-encoded as a `TimeSeries.labels` field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSet {
    entries: Vec<Injected>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Injected {
    name: Bytes,
    value: Bytes,
    /// The encoded label field; empty when the value is empty (label removed).
    encoded: Bytes,
}

/// Why a [`LabelSet`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelSetError {
    /// A label with an empty name.
    #[error("empty label name")]
    EmptyName,
    /// The same name twice.
    #[error("duplicate label name {0:?}")]
    Duplicate(String),
}

impl LabelSet {
    /// Builds a label set from `(name, value)` pairs in any order. An empty
    /// value means "remove this label" (as in Prometheus, an empty label value
    /// is the same as no label).
    pub fn new<N, V>(labels: impl IntoIterator<Item = (N, V)>) -> Result<LabelSet, LabelSetError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut entries: Vec<Injected> = labels
            .into_iter()
            .map(|(n, v)| {
                let (name, value) = (n.as_ref().as_bytes(), v.as_ref().as_bytes());
                Injected {
                    name: Bytes::copy_from_slice(name),
                    value: Bytes::copy_from_slice(value),
                    encoded: encode_label_field(name, value),
                }
            })
            .collect();
        if entries.iter().any(|e| e.name.is_empty()) {
            return Err(LabelSetError::EmptyName);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(LabelSetError::Duplicate(
                String::from_utf8_lossy(&w[0].name).into_owned(),
            ));
        }
        Ok(LabelSet { entries })
    }

    /// True when the set stamps nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(name, value)` pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|e| (&e.name[..], &e.value[..]))
    }

    /// The value of `name` in this set.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries
            .binary_search_by(|e| e.name[..].cmp(name))
            .ok()
            .map(|i| &self.entries[i].value[..])
    }
}

/// Encodes `Label { name = 1; value = 2; }` as a `labels` (field 1) entry;
/// empty when `value` is empty.
fn encode_label_field(name: &[u8], value: &[u8]) -> Bytes {
    if value.is_empty() {
        return Bytes::new();
    }
    let inner = len_field_size(name.len()) + len_field_size(value.len());
    let mut buf = BytesMut::with_capacity(len_field_size(inner));
    put_len_prefix(&mut buf, 1, inner);
    put_len_prefix(&mut buf, 1, name.len());
    buf.put_slice(name);
    put_len_prefix(&mut buf, 2, value.len());
    buf.put_slice(value);
    buf.freeze()
}

/// Appends one label field (`Label{name, value}` as field 1) to `out`.
pub(crate) fn put_label_field(out: &mut impl BufMut, field: u32, name: &[u8], value: &[u8]) {
    let inner = len_field_size(name.len()) + len_field_size(value.len());
    put_len_prefix(out, field, inner);
    put_len_prefix(out, 1, name.len());
    out.put_slice(name);
    put_len_prefix(out, 2, value.len());
    out.put_slice(value);
}

/// Size of a label field written by [`put_label_field`] with a one-byte key.
pub(crate) fn label_field_size(name: &[u8], value: &[u8]) -> usize {
    len_field_size(len_field_size(name.len()) + len_field_size(value.len()))
}

/// Where one of the sender's labels sits in the series message.
#[derive(Clone, Debug)]
struct LabelSpan {
    name: Range<usize>,
    raw: Range<usize>,
}

/// One piece of the output labels: a sender label field or an injected one.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// Index into the sender's label spans.
    Sender(u32),
    /// Index into the injected label set.
    Injected(u32),
}

/// Writes `TimeSeries` records; holds scratch space reused across series.
#[derive(Debug, Default)]
pub struct Encoder {
    labels: Vec<LabelSpan>,
    pieces: Vec<Piece>,
    /// End of the last label field when all label fields form a prefix of
    /// the message (the usual layout); `None` otherwise.
    labels_prefix_end: Option<usize>,
}

impl Encoder {
    /// A new encoder.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Appends `series` with `inject` stamped on it to `out` as one
    /// `WriteRequest.timeseries` record (key, length, message). Returns the
    /// number of bytes written.
    pub fn encode_series(
        &mut self,
        series: SeriesView<'_>,
        inject: &LabelSet,
        out: &mut BytesMut,
    ) -> usize {
        let before = out.len();
        let msg = series.bytes();
        self.collect_labels(msg);
        if !series.series().labels_sorted() {
            self.labels
                .sort_unstable_by(|a, b| cmp_names(&msg[a.name.clone()], &msg[b.name.clone()]));
        }
        let labels_len = self.merge(msg, inject);

        // Everything that is not a sender label is copied as is.
        let sender_labels: usize = self.labels.iter().map(|l| l.raw.len()).sum();
        let len = msg.len() - sender_labels + labels_len;
        out.reserve(len_field_size(len));
        put_varint(out, (1 << 3) | 2);
        put_varint(out, len as u64);
        let start = out.len();
        for piece in &self.pieces {
            match *piece {
                Piece::Sender(i) => out.put_slice(&msg[self.labels[i as usize].raw.clone()]),
                Piece::Injected(i) => out.put_slice(&inject.entries[i as usize].encoded),
            }
        }
        match self.labels_prefix_end {
            Some(end) => out.put_slice(&msg[end..]),
            None => copy_non_label_fields(msg, out),
        }
        debug_assert_eq!(out.len() - start, len, "encoded length");
        out.len() - before
    }

    /// Encodes one series into a fresh shared record.
    pub fn encode_series_to_bytes(&mut self, series: SeriesView<'_>, inject: &LabelSet) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_series(series, inject, &mut out);
        out.freeze()
    }

    fn collect_labels(&mut self, msg: &[u8]) {
        self.labels.clear();
        self.labels_prefix_end = Some(0);
        let mut r = Reader::new(msg);
        while !r.is_empty() {
            let start = r.pos();
            let Ok((field, wire)) = r.key() else { return };
            if field == 1 && wire == WireType::Len {
                let Ok((ps, pe)) = r.len_range() else { return };
                let name = match crate::scan::parse_label(&msg[ps..pe]) {
                    // The name is a sub-slice of `msg`: recover its offset.
                    Ok((name, _)) => {
                        let offset = name.as_ptr() as usize - msg.as_ptr() as usize;
                        offset..offset + name.len()
                    }
                    Err(_) => ps..ps,
                };
                if self.labels_prefix_end == Some(start) {
                    self.labels_prefix_end = Some(r.pos());
                } else {
                    self.labels_prefix_end = None;
                }
                self.labels.push(LabelSpan {
                    name,
                    raw: start..r.pos(),
                });
            } else if r.skip(wire).is_err() {
                return;
            }
        }
    }

    /// Merges the sender's (sorted) labels with the injected ones into
    /// `self.pieces`; returns the encoded size of the merged labels.
    fn merge(&mut self, msg: &[u8], inject: &LabelSet) -> usize {
        self.pieces.clear();
        let injected = &inject.entries[..];
        let mut next = 0;
        let mut len = 0;
        for (index, label) in self.labels.iter().enumerate() {
            let name = &msg[label.name.clone()];
            let mut replaced = false;
            while let Some(i) = injected.get(next) {
                match cmp_names(&i.name, name) {
                    Ordering::Greater => break,
                    order => {
                        self.pieces.push(Piece::Injected(next as u32));
                        len += i.encoded.len();
                        next += 1;
                        if order == Ordering::Equal {
                            // The sender's value is replaced (or removed) by the injected one.
                            replaced = true;
                            break;
                        }
                    }
                }
            }
            if !replaced {
                self.pieces.push(Piece::Sender(index as u32));
                len += label.raw.len();
            }
        }
        for (offset, i) in injected[next..].iter().enumerate() {
            self.pieces.push(Piece::Injected((next + offset) as u32));
            len += i.encoded.len();
        }
        len
    }
}

/// Copies every field of a series message except its labels, in wire order,
/// in as few contiguous copies as possible.
fn copy_non_label_fields(msg: &[u8], out: &mut BytesMut) {
    let mut r = Reader::new(msg);
    let mut run_start = 0;
    while !r.is_empty() {
        let field_start = r.pos();
        let Ok((field, wire)) = r.key() else { break };
        if r.skip(wire).is_err() {
            break;
        }
        if field == 1 && wire == WireType::Len {
            out.put_slice(&msg[run_start..field_start]);
            run_start = r.pos();
        }
    }
    out.put_slice(&msg[run_start..]);
}
