//! Zero-copy scanner for remote-write 1.0 `WriteRequest` bodies.
//!
//! # Design
//! The decompressed body is held in one [`bytes::Bytes`]. [`scan_v1`] walks it
//! once, validates everything ingest must refuse (see SPEC §2), and records for
//! each `TimeSeries` only a [`Series`]: the byte range of the message within the
//! body and a few counts. Nothing is copied and nothing is allocated per series
//! or per label: the caller passes a `Vec<Series>` that it reuses across
//! requests. Later stages borrow label names and values straight from the body
//! through [`Series::view`], or share the series bytes with `Bytes::slice`.
//!
//! # Invariants after a successful scan
//! - every varint, key, length and fixed-size value of the request is well formed;
//! - every known field has the wire type of the schema; unknown fields are skipped;
//! - every label name and value (series and exemplar labels, metadata strings)
//!   is valid UTF-8, and every label name is non-empty;
//! - no series has two labels with the same name, or more labels, longer names
//!   or longer values than the [`Limits`] allow;
//! - the request has at most `limits.max_series` series.
//!
//! Label order is not required by 1.0 (senders sort, but receivers such as
//! Prometheus accept unsorted input); the scanner records whether a series'
//! labels are sorted so the encoder sorts only when it has to.
//!
//! # What routing reads without parsing again
//! The scanner already parses every label, so it also notes, at the cost of a
//! length check per label, where the values of the [`RoutingLabel`]s
//! (`__name__`, `deploymentId`, `namespace`) are, and whether the series'
//! label fields are one contiguous run of bytes (every sender writes them
//! that way; 1.0 allows other fields in between). The gateway's router reads
//! those three values and hashes that run in one call instead of walking the
//! labels a second time ([`SeriesView::routing_label`],
//! [`SeriesView::label_fields`]). Positions are `u32` offsets within the
//! series message: a body is far below 4 GiB (the decompressed-size limit).
//!
//! Errors carry the series and label index: `timeseries 12: label 3: truncated varint`.

use std::ops::Range;

use bytes::Bytes;

use crate::error::{ErrorKind, Item, LabelPart, Location, ScanError};
use crate::wire::{check_packed_fixed64, check_packed_varints, expect_wire, Reader, WireType};
use crate::Limits;

/// One `TimeSeries` of a scanned request: where it is and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    start: usize,
    end: usize,
    labels: u32,
    samples: u32,
    exemplars: u32,
    histograms: u32,
    /// Offsets (in the message) of the first label field's start and the
    /// last one's end; meaningful only when `contiguous`.
    label_fields: (u32, u32),
    /// Where each [`RoutingLabel`]'s value is: (offset in the message, length);
    /// offset 0 means absent (a value never starts a message: a key precedes it).
    routing: [(u32, u32); 3],
    sorted: bool,
    contiguous: bool,
    /// The newest timestamp of its samples and histograms (ms; `i64::MIN`
    /// without any).
    newest: i64,
}

/// The labels whose values the scanner locates for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingLabel {
    /// `__name__`.
    Name = 0,
    /// `deploymentId`.
    DeploymentId = 1,
    /// `namespace`.
    Namespace = 2,
}

impl RoutingLabel {
    /// Which routing label `name` is, if any: one length check for most names.
    #[inline(always)]
    fn of(name: &[u8]) -> Option<RoutingLabel> {
        match name.len() {
            8 if name == b"__name__" => Some(RoutingLabel::Name),
            12 if name == b"deploymentId" => Some(RoutingLabel::DeploymentId),
            9 if name == b"namespace" => Some(RoutingLabel::Namespace),
            _ => None,
        }
    }
}

impl Series {
    /// Byte range of the `TimeSeries` message (without its key and length) in the body.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// The `TimeSeries` message bytes within `body`.
    pub fn bytes<'a>(&self, body: &'a [u8]) -> &'a [u8] {
        &body[self.start..self.end]
    }

    /// The `TimeSeries` message as a shared slice of `body` (no copy).
    pub fn slice(&self, body: &Bytes) -> Bytes {
        body.slice(self.start..self.end)
    }

    /// A borrowed view of the series' labels within `body`.
    pub fn view<'a>(&self, body: &'a [u8]) -> SeriesView<'a> {
        SeriesView {
            msg: self.bytes(body),
            series: *self,
        }
    }

    /// Number of labels.
    pub fn label_count(&self) -> usize {
        self.labels as usize
    }

    /// Number of float samples.
    pub fn samples(&self) -> usize {
        self.samples as usize
    }

    /// Number of exemplars.
    pub fn exemplars(&self) -> usize {
        self.exemplars as usize
    }

    /// Number of native histogram samples.
    pub fn histograms(&self) -> usize {
        self.histograms as usize
    }

    /// The newest timestamp of its samples and histograms, in ms since the
    /// epoch (`i64::MIN` when it has none).
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// True when the labels arrived sorted by name.
    pub fn labels_sorted(&self) -> bool {
        self.sorted
    }
}

/// Counts of what a request held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Series.
    pub series: usize,
    /// Float samples.
    pub samples: usize,
    /// Exemplars.
    pub exemplars: usize,
    /// Native histogram samples.
    pub histograms: usize,
    /// Metadata entries.
    pub metadata: usize,
}

/// A borrowed view of one series of a scanned body.
#[derive(Clone, Copy, Debug)]
pub struct SeriesView<'a> {
    msg: &'a [u8],
    series: Series,
}

impl<'a> SeriesView<'a> {
    /// The series' labels in wire order.
    pub fn labels(&self) -> Labels<'a> {
        Labels::new(self.msg)
    }

    /// The value of the label `name`, if the series has it.
    pub fn label(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.labels().find(|l| l.name == name).map(|l| l.value)
    }

    /// The metric name (`__name__`).
    pub fn metric_name(&self) -> Option<&'a [u8]> {
        self.routing_label(RoutingLabel::Name)
    }

    /// The value of a [`RoutingLabel`], located by the scan (no parsing).
    #[inline]
    pub fn routing_label(&self, which: RoutingLabel) -> Option<&'a [u8]> {
        let (at, len) = self.series.routing[which as usize];
        if at == 0 {
            return None;
        }
        let at = at as usize;
        self.msg.get(at..at + len as usize)
    }

    /// Every label field of the series (key, length and `Label` message each,
    /// in wire order) as one slice, when they are contiguous in the message
    /// (as every sender writes them); `None` when other fields sit between
    /// labels. An empty slice for a series without labels.
    #[inline]
    pub fn label_fields(&self) -> Option<&'a [u8]> {
        if !self.series.contiguous {
            return None;
        }
        let (start, end) = self.series.label_fields;
        self.msg.get(start as usize..end as usize)
    }

    /// The `TimeSeries` message bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.msg
    }

    /// The series' record from the scan.
    pub fn series(&self) -> Series {
        self.series
    }
}

/// One label, borrowed from the body; name and value are validated UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label<'a> {
    /// The label name.
    pub name: &'a [u8],
    /// The label value.
    pub value: &'a [u8],
    /// The whole label field as on the wire: key, length and `Label` message.
    pub raw: &'a [u8],
}

/// Iterator over the labels of a scanned series.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    msg: &'a [u8],
    reader: Reader<'a>,
}

impl<'a> Labels<'a> {
    fn new(msg: &'a [u8]) -> Labels<'a> {
        Labels {
            msg,
            reader: Reader::new(msg),
        }
    }
}

impl<'a> Iterator for Labels<'a> {
    type Item = Label<'a>;

    fn next(&mut self) -> Option<Label<'a>> {
        // The body was validated by the scan, so errors cannot happen here;
        // if they did, ending the iteration is the safe answer.
        while !self.reader.is_empty() {
            let field_start = self.reader.pos();
            let (field, wire) = self.reader.key().ok()?;
            if field == 1 && wire == WireType::Len {
                let payload = self.reader.len_delimited().ok()?;
                let (name, value) = parse_label(payload).ok()?;
                let raw = &self.msg[field_start..self.reader.pos()];
                return Some(Label { name, value, raw });
            }
            self.reader.skip(wire).ok()?;
        }
        None
    }
}

/// Splits a `Label` message into name and value (without validating them).
#[inline(always)]
pub(crate) fn parse_label(payload: &[u8]) -> Result<(&[u8], &[u8]), ErrorKind> {
    // Fast path for the shape every sender writes: name (field 1) then value
    // (field 2), each shorter than 128 bytes, nothing else.
    if let [0x0a, nl, rest @ ..] = payload {
        let nl = *nl as usize;
        if nl < 0x80 {
            if let Some((name, [0x12, vl, value @ ..])) = rest.split_at_checked(nl) {
                if (*vl as usize) == value.len() && value.len() < 0x80 {
                    return Ok((name, value));
                }
            }
        }
    }
    parse_label_slow(payload)
}

#[cold]
#[inline(never)]
fn parse_label_slow(payload: &[u8]) -> Result<(&[u8], &[u8]), ErrorKind> {
    let mut r = Reader::new(payload);
    let mut name: &[u8] = &[];
    let mut value: &[u8] = &[];
    // A field given twice: the last one counts (protobuf), but every one
    // must be a valid string, as a decoder checks each (the last one is
    // checked with the label's other rules).
    let utf8 = |s: &[u8]| {
        std::str::from_utf8(s)
            .map(drop)
            .map_err(|_| ErrorKind::InvalidUtf8String)
    };
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                expect_wire(field, wire, WireType::Len)?;
                utf8(name)?;
                name = r.len_delimited()?;
            }
            2 => {
                expect_wire(field, wire, WireType::Len)?;
                utf8(value)?;
                value = r.len_delimited()?;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok((name, value))
}

/// Checks one series label against UTF-8 rules and limits.
pub(crate) fn check_label(name: &[u8], value: &[u8], limits: &Limits) -> Result<(), ErrorKind> {
    check_label_shape(name, value, limits)?;
    check_utf8(name, value)
}

/// [`check_label`] without the UTF-8 check (for callers that checked it already).
#[inline]
fn check_label_shape(name: &[u8], value: &[u8], limits: &Limits) -> Result<(), ErrorKind> {
    if name.is_empty() {
        return Err(ErrorKind::EmptyLabelName);
    }
    if name.len() > limits.max_label_name_len {
        return Err(ErrorKind::LabelNameTooLong {
            len: name.len(),
            limit: limits.max_label_name_len,
        });
    }
    if value.len() > limits.max_label_value_len {
        return Err(ErrorKind::LabelValueTooLong {
            len: value.len(),
            limit: limits.max_label_value_len,
        });
    }
    Ok(())
}

/// Orders label names; most pairs differ in their first byte, so that is
/// compared before falling back to a full comparison.
#[inline]
pub(crate) fn cmp_names(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (a.first(), b.first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

/// Checks that a label's name and value are UTF-8; ASCII (the common case) is
/// checked a word at a time by `is_ascii`.
#[inline]
fn check_utf8(name: &[u8], value: &[u8]) -> Result<(), ErrorKind> {
    if !name.is_ascii() {
        std::str::from_utf8(name).map_err(|_| ErrorKind::InvalidUtf8(LabelPart::Name))?;
    }
    if !value.is_ascii() {
        std::str::from_utf8(value).map_err(|_| ErrorKind::InvalidUtf8(LabelPart::Value))?;
    }
    Ok(())
}

/// Scans a decompressed remote-write 1.0 body.
///
/// On success `out` holds one [`Series`] per `TimeSeries` in wire order (it is
/// cleared first, and its capacity is reused). On error nothing in `out` is
/// meaningful and the whole request must be refused.
pub fn scan_v1(body: &Bytes, limits: &Limits, out: &mut Vec<Series>) -> Result<Summary, ScanError> {
    out.clear();
    let mut summary = Summary::default();
    let mut r = Reader::new(body);
    let top = Location::default();
    // Fields 4 and 5 (2.0 symbols and series) do not exist in 1.0.
    let mut v2_fields = false;
    while !r.is_empty() {
        // A broken key between series is reported against the series it would start.
        let (field, wire) = r.key().map_err(|k| Location::series(out.len()).err(k))?;
        match field {
            1 => {
                let at = Location::series(out.len());
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                if out.len() >= limits.max_series {
                    return Err(top.err(ErrorKind::TooManySeries {
                        limit: limits.max_series,
                    }));
                }
                let (start, end) = r.len_range().map_err(|k| at.err(k))?;
                let series = scan_series(&body[start..end], start, limits, at)?;
                summary.samples += series.samples();
                summary.exemplars += series.exemplars();
                summary.histograms += series.histograms();
                out.push(series);
            }
            3 => {
                let at = top.item(Item::Metadata, summary.metadata);
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let payload = r.len_delimited().map_err(|k| at.err(k))?;
                check_metadata(payload).map_err(|k| at.err(k))?;
                summary.metadata += 1;
            }
            _ => {
                v2_fields |= field == 4 || field == 5;
                r.skip(wire).map_err(|k| top.err(k))?
            }
        }
    }
    if out.is_empty() && summary.metadata == 0 && v2_fields {
        return Err(top.err(ErrorKind::WrongVersion {
            declared: "1.0",
            found: "2.0",
        }));
    }
    summary.series = out.len();
    Ok(summary)
}

fn scan_series(
    msg: &[u8],
    start: usize,
    limits: &Limits,
    at: Location,
) -> Result<Series, ScanError> {
    let mut series = Series {
        start,
        end: start + msg.len(),
        labels: 0,
        samples: 0,
        exemplars: 0,
        histograms: 0,
        label_fields: (0, 0),
        routing: [(0, 0); 3],
        sorted: true,
        contiguous: true,
        newest: i64::MIN,
    };
    let mut prev_name: Option<&[u8]> = None;
    let mut r = Reader::new(msg);
    while !r.is_empty() {
        let field_start = r.pos();
        let (field, wire) = r.key().map_err(|k| at.err(k))?;
        match field {
            1 => {
                let at = at.label(series.labels as usize);
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let payload = r.len_delimited().map_err(|k| at.err(k))?;
                let (name, value) = parse_label(payload).map_err(|k| at.err(k))?;
                if series.labels == 0 {
                    series.label_fields.0 = field_start as u32;
                } else if series.label_fields.1 != field_start as u32 {
                    series.contiguous = false;
                }
                series.label_fields.1 = r.pos() as u32;
                if let Some(which) = RoutingLabel::of(name) {
                    // A non-empty `value` is a sub-slice of `msg`: its offset
                    // is the pointer difference (no unsafe). An empty one may
                    // be a static `&[]` (field absent, as prost writes an
                    // empty value): any non-zero in-bounds offset will do.
                    let offset = if value.is_empty() {
                        r.pos()
                    } else {
                        value.as_ptr() as usize - msg.as_ptr() as usize
                    };
                    series.routing[which as usize] = (offset as u32, value.len() as u32);
                }
                check_label_shape(name, value, limits).map_err(|k| at.err(k))?;
                // Name and value are sub-slices of the payload: when it is all
                // ASCII (the common case) both are, in one word-wise check.
                if !payload.is_ascii() {
                    check_utf8(name, value).map_err(|k| at.err(k))?;
                }
                if let Some(prev) = prev_name {
                    match cmp_names(name, prev) {
                        std::cmp::Ordering::Greater => {}
                        std::cmp::Ordering::Equal => return Err(at.err(duplicate(name))),
                        std::cmp::Ordering::Less => series.sorted = false,
                    }
                }
                prev_name = Some(name);
                series.labels += 1;
                if series.labels as usize > limits.max_labels_per_series {
                    return Err(at.err(ErrorKind::TooManyLabels {
                        count: series.labels as usize,
                        limit: limits.max_labels_per_series,
                    }));
                }
            }
            2 => {
                let at = at.item(Item::Sample, series.samples as usize);
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let payload = r.len_delimited().map_err(|k| at.err(k))?;
                let timestamp = check_sample(payload).map_err(|k| at.err(k))?;
                series.newest = series.newest.max(timestamp);
                series.samples += 1;
            }
            3 => {
                let at = at.item(Item::Exemplar, series.exemplars as usize);
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let payload = r.len_delimited().map_err(|k| at.err(k))?;
                check_exemplar(payload, at)?;
                series.exemplars += 1;
            }
            4 => {
                let at = at.item(Item::Histogram, series.histograms as usize);
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let payload = r.len_delimited().map_err(|k| at.err(k))?;
                let timestamp = check_histogram(payload).map_err(|k| at.err(k))?;
                series.newest = series.newest.max(timestamp);
                series.histograms += 1;
            }
            _ => r.skip(wire).map_err(|k| at.err(k))?,
        }
    }
    if !series.sorted {
        check_no_duplicates(msg, at)?;
    }
    Ok(series)
}

fn duplicate(name: &[u8]) -> ErrorKind {
    ErrorKind::DuplicateLabelName(crate::error::quote(&String::from_utf8_lossy(name)))
}

/// Quadratic duplicate check for the rare unsorted series (at most
/// `max_labels_per_series` labels, so bounded, and allocation-free).
fn check_no_duplicates(msg: &[u8], at: Location) -> Result<(), ScanError> {
    let view = Labels::new(msg);
    for (i, a) in view.clone().enumerate() {
        if view.clone().take(i).any(|b| b.name == a.name) {
            return Err(at.label(i).err(duplicate(a.name)));
        }
    }
    Ok(())
}

/// `Sample { double value = 1; int64 timestamp = 2; }` (also 2.0's
/// `Sample`): its timestamp (0 when absent, as protobuf reads it).
pub(crate) fn check_sample(payload: &[u8]) -> Result<i64, ErrorKind> {
    let mut r = Reader::new(payload);
    let mut timestamp = 0;
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match field {
            1 => expect_wire(field, wire, WireType::I64)?,
            2 => {
                expect_wire(field, wire, WireType::Varint)?;
                timestamp = r.varint()? as i64;
                continue;
            }
            _ => {}
        }
        r.skip(wire)?;
    }
    Ok(timestamp)
}

fn check_exemplar(payload: &[u8], at: Location) -> Result<(), ScanError> {
    let mut r = Reader::new(payload);
    let mut labels = 0;
    while !r.is_empty() {
        let (field, wire) = r.key().map_err(|k| at.err(k))?;
        match field {
            1 => {
                let at = at.label(labels);
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let label = r.len_delimited().map_err(|k| at.err(k))?;
                let (name, value) = parse_label(label).map_err(|k| at.err(k))?;
                check_exemplar_label(name, value).map_err(|k| at.err(k))?;
                labels += 1;
                continue;
            }
            2 => expect_wire(field, wire, WireType::I64).map_err(|k| at.err(k))?,
            3 => expect_wire(field, wire, WireType::Varint).map_err(|k| at.err(k))?,
            _ => {}
        }
        r.skip(wire).map_err(|k| at.err(k))?;
    }
    Ok(())
}

/// Exemplar labels: UTF-8 and a non-empty name (series limits do not apply).
pub(crate) fn check_exemplar_label(name: &[u8], value: &[u8]) -> Result<(), ErrorKind> {
    if name.is_empty() {
        return Err(ErrorKind::EmptyLabelName);
    }
    check_utf8(name, value)
}

/// `MetricMetadata { type = 1; metric_family_name = 2; help = 4; unit = 5; }`.
fn check_metadata(payload: &[u8]) -> Result<(), ErrorKind> {
    let mut r = Reader::new(payload);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                expect_wire(field, wire, WireType::Varint)?;
                r.varint()?;
            }
            2 | 4 | 5 => {
                expect_wire(field, wire, WireType::Len)?;
                let text = r.len_delimited()?;
                std::str::from_utf8(text).map_err(|_| ErrorKind::InvalidUtf8String)?;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(())
}

/// Validates the structure of a native `Histogram` message (identical field
/// numbers in 1.0 and 2.0) so that its bytes can be forwarded verbatim: its
/// timestamp (0 when absent).
pub(crate) fn check_histogram(payload: &[u8]) -> Result<i64, ErrorKind> {
    let mut r = Reader::new(payload);
    let mut timestamp = 0;
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match field {
            15 => {
                expect_wire(field, wire, WireType::Varint)?;
                timestamp = r.varint()? as i64;
                continue;
            }
            // count_int, schema (sint32), zero_count_int, reset_hint
            1 | 4 | 6 | 14 => expect_wire(field, wire, WireType::Varint)?,
            // count_float, sum, zero_threshold, zero_count_float
            2 | 3 | 5 | 7 => expect_wire(field, wire, WireType::I64)?,
            // negative_spans, positive_spans
            8 | 11 => {
                expect_wire(field, wire, WireType::Len)?;
                check_bucket_span(r.len_delimited()?)?;
                continue;
            }
            // negative_deltas, positive_deltas: repeated sint64, packed or not
            9 | 12 => {
                if wire == WireType::Len {
                    check_packed_varints(r.len_delimited()?)?;
                    continue;
                }
                expect_wire(field, wire, WireType::Varint)?;
            }
            // negative_counts, positive_counts, custom_values: repeated double
            10 | 13 | 16 => {
                if wire == WireType::Len {
                    check_packed_fixed64(r.len_delimited()?)?;
                    continue;
                }
                expect_wire(field, wire, WireType::I64)?;
            }
            _ => {}
        }
        r.skip(wire)?;
    }
    Ok(timestamp)
}

/// `BucketSpan { sint32 offset = 1; uint32 length = 2; }`.
fn check_bucket_span(payload: &[u8]) -> Result<(), ErrorKind> {
    let mut r = Reader::new(payload);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        if field == 1 || field == 2 {
            expect_wire(field, wire, WireType::Varint)?;
        }
        r.skip(wire)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::put_len_prefix;
    use bytes::BufMut;

    fn label_field(out: &mut Vec<u8>, name: &str, value: &str) {
        let mut l = Vec::new();
        put_len_prefix(&mut l, 1, name.len());
        l.extend_from_slice(name.as_bytes());
        put_len_prefix(&mut l, 2, value.len());
        l.extend_from_slice(value.as_bytes());
        put_len_prefix(out, 1, l.len());
        out.extend_from_slice(&l);
    }

    fn sample_field(out: &mut Vec<u8>) {
        out.put_slice(&[0x12, 0x0b, 0x09]);
        out.put_f64_le(1.0);
        out.put_slice(&[0x10, 0x01]);
    }

    fn body(series: &[Vec<u8>]) -> Bytes {
        let mut out = Vec::new();
        for s in series {
            put_len_prefix(&mut out, 1, s.len());
            out.extend_from_slice(s);
        }
        Bytes::from(out)
    }

    /// A series' newest timestamp is the largest of its samples' and
    /// histograms' (in any order), `i64::MIN` without either.
    #[test]
    fn scan_keeps_each_series_newest_timestamp() {
        use crate::v1;
        let sample = |t| v1::Sample {
            value: 1.0,
            timestamp: t,
        };
        let req = v1::WriteRequest {
            timeseries: vec![
                v1::TimeSeries {
                    labels: vec![v1::Label {
                        name: "__name__".into(),
                        value: "a".into(),
                    }],
                    samples: vec![
                        sample(1_700_000_000_500),
                        sample(1_700_000_009_000),
                        sample(1_700_000_001_000),
                    ],
                    ..Default::default()
                },
                v1::TimeSeries {
                    labels: vec![v1::Label {
                        name: "__name__".into(),
                        value: "h".into(),
                    }],
                    samples: vec![sample(-5)],
                    histograms: vec![v1::Histogram {
                        timestamp: 1_700_000_020_000,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                v1::TimeSeries {
                    labels: vec![v1::Label {
                        name: "__name__".into(),
                        value: "none".into(),
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut out = Vec::new();
        scan_v1(&body, &Limits::default(), &mut out).unwrap();
        let newest: Vec<i64> = out.iter().map(Series::newest).collect();
        assert_eq!(newest, [1_700_000_009_000, 1_700_000_020_000, i64::MIN]);
    }

    /// The positions the scan records agree with a walk over the labels.
    #[test]
    fn scan_routing_labels_and_label_fields_match_the_labels() {
        let req = crate::testdata::realistic_request(64, 3);
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut out = Vec::new();
        scan_v1(&body, &Limits::default(), &mut out).unwrap();
        for s in &out {
            let view = s.view(&body);
            for (which, name) in [
                (RoutingLabel::Name, &b"__name__"[..]),
                (RoutingLabel::DeploymentId, b"deploymentId"),
                (RoutingLabel::Namespace, b"namespace"),
            ] {
                assert_eq!(view.routing_label(which), view.label(name));
                assert!(view.routing_label(which).is_some());
            }
            let raw: Vec<u8> = view.labels().flat_map(|l| l.raw.iter().copied()).collect();
            assert_eq!(view.label_fields(), Some(&raw[..]));
        }
    }

    #[test]
    fn scan_labels_split_by_another_field_are_not_contiguous() {
        let mut split = Vec::new();
        label_field(&mut split, "__name__", "up");
        sample_field(&mut split);
        label_field(&mut split, "namespace", "");
        let mut plain = Vec::new();
        sample_field(&mut plain);
        label_field(&mut plain, "job", "x");
        label_field(&mut plain, "deploymentId", "d");
        let empty = Vec::new();
        let bytes = body(&[split, plain, empty]);
        let mut out = Vec::new();
        scan_v1(&bytes, &Limits::default(), &mut out).unwrap();

        let v = out[0].view(&bytes);
        assert_eq!(v.label_fields(), None);
        assert_eq!(v.routing_label(RoutingLabel::Name), Some(&b"up"[..]));
        assert_eq!(v.routing_label(RoutingLabel::Namespace), Some(&b""[..]));
        assert_eq!(v.routing_label(RoutingLabel::DeploymentId), None);

        // Labels after a sample, but adjacent to each other: contiguous.
        let v = out[1].view(&bytes);
        let raw: Vec<u8> = v.labels().flat_map(|l| l.raw.iter().copied()).collect();
        assert_eq!(v.label_fields(), Some(&raw[..]));
        assert_eq!(v.routing_label(RoutingLabel::DeploymentId), Some(&b"d"[..]));
        assert_eq!(v.metric_name(), None);

        let v = out[2].view(&bytes);
        assert_eq!(v.label_fields(), Some(&b""[..]));
        assert_eq!(v.routing_label(RoutingLabel::Name), None);

        // A label whose value field is absent (how prost writes "").
        let mut absent = Vec::new();
        put_len_prefix(&mut absent, 1, 11);
        put_len_prefix(&mut absent, 1, 9);
        absent.extend_from_slice(b"namespace");
        let absent = body(&[absent]);
        scan_v1(&absent, &Limits::default(), &mut out).unwrap();
        let v = out[0].view(&absent);
        assert_eq!(v.routing_label(RoutingLabel::Namespace), Some(&b""[..]));
    }
}
