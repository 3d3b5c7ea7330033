//! Reader for remote-write 2.0 `io.prometheus.write.v2.Request` bodies, which
//! re-emits them as a 1.0 `WriteRequest` so the rest of the gateway handles one
//! format.
//!
//! # Design
//! Pass 1 walks the top level once: it validates the framing, checks that every
//! symbol is UTF-8 and records the symbol table as byte ranges (one vector per
//! request, nothing per symbol). Pass 2 validates and converts each series:
//! - `labels_refs` must have an even length, every reference must be inside
//!   the symbol table, names non-empty and within the limits, and names
//!   strictly ascending (an equal name is a duplicate, a smaller one is
//!   "not sorted": 2.0 requires sorted labels);
//! - samples (same message in both versions) and histograms (same field
//!   numbers) are validated and copied verbatim: field 2 → 1.0 field 2,
//!   field 3 → 1.0 field 4;
//! - exemplars get their label references resolved into 1.0 `Label`s;
//! - metadata with a type, help or unit becomes a 1.0 `MetricMetadata` entry
//!   named after the series' `__name__`;
//! - `created_timestamp` has no 1.0 field: a non-zero one is kept in the
//!   1.0 series as field 6 (its 2.0 number, unused in 1.0), so that it
//!   reaches `protocol: V2` targets ([`crate::v2write`] maps it back);
//!   1.0 receivers skip it as an unknown field, as protobuf readers do.
//!
//! The output is then an ordinary 1.0 body for [`crate::scan::scan_v1`]; the
//! returned [`Summary`] counts what the 2.0 request held, which is what the
//! `X-Prometheus-Remote-Write-*-Written` response headers report.

use bytes::{BufMut, Bytes, BytesMut};

use crate::encode::{label_field_size, put_label_field};
use crate::error::{ErrorKind, Item, Location, ScanError};
use crate::scan::{check_exemplar_label, check_histogram, check_label, check_sample, Summary};
use crate::wire::{expect_wire, len_field_size, put_len_prefix, put_varint, Reader, WireType};
use crate::Limits;

/// The field of a 1.0 `TimeSeries` that carries a 2.0 series'
/// `created_timestamp` inside the gateway (2.0's own number; 1.0 has no
/// field 6).
pub const CREATED_TIMESTAMP_FIELD: u32 = 6;
const CREATED_TIMESTAMP_KEY: u64 = (CREATED_TIMESTAMP_FIELD as u64) << 3;

/// Reads a decompressed 2.0 request and returns the equivalent 1.0 body,
/// refused with [`ErrorKind::ConvertsTooLarge`] when that body would exceed
/// `max_out` bytes: measured first ([`v1_len`]), so nothing past the limit is
/// ever allocated, then written into one buffer of exactly that size.
pub fn to_v1(body: &[u8], limits: &Limits, max_out: usize) -> Result<(Bytes, Summary), ScanError> {
    let len = v1_len(body, limits, max_out)?;
    to_v1_measured(body, limits, len)
}

/// The size of the 1.0 body [`to_v1`] makes of `body`, after validating it
/// entirely; [`ErrorKind::ConvertsTooLarge`] past `max_out`. A 2.0 series
/// names its labels by reference, so a small request can expand without
/// bound (a million series naming one 16 KiB symbol): the caller reserves
/// memory for this size, then converts with [`to_v1_measured`].
pub fn v1_len(body: &[u8], limits: &Limits, max_out: usize) -> Result<usize, ScanError> {
    convert(body, limits, max_out, None).map(|(_, len)| len)
}

/// Converts `body`, which [`v1_len`] measured at `len` bytes, into one
/// buffer of that size (without measuring it again).
pub fn to_v1_measured(
    body: &[u8],
    limits: &Limits,
    len: usize,
) -> Result<(Bytes, Summary), ScanError> {
    let mut out = BytesMut::with_capacity(len);
    let (summary, _) = convert(body, limits, len, Some(&mut out))?;
    Ok((out.freeze(), summary))
}

/// Converts `body`, writing into `out` when given (else only measuring);
/// returns the summary and the size of the 1.0 body.
fn convert(
    body: &[u8],
    limits: &Limits,
    max_out: usize,
    out: Option<&mut BytesMut>,
) -> Result<(Summary, usize), ScanError> {
    let symbols = read_symbols(body)?;
    let mut conv = Converter {
        body,
        symbols,
        limits,
        refs: Vec::new(),
        series_buf: BytesMut::new(),
        metadata: BytesMut::new(),
        summary: Summary::default(),
        out_len: 0,
        max_out,
        write: out.is_some(),
    };
    let mut out = out;
    let mut r = Reader::new(body);
    // Fields 1 and 3 (1.0 series and metadata) do not exist in 2.0.
    let mut v1_fields = false;
    while !r.is_empty() {
        let at = Location::series(conv.summary.series);
        let (field, wire) = r.key().map_err(|k| at.err(k))?;
        if field != 5 {
            v1_fields |= field == 1 || field == 3;
            r.skip(wire).map_err(|k| at.err(k))?;
            continue;
        }
        expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
        if conv.summary.series >= limits.max_series {
            return Err(Location::default().err(ErrorKind::TooManySeries {
                limit: limits.max_series,
            }));
        }
        let msg = r.len_delimited().map_err(|k| at.err(k))?;
        conv.series(msg, at, out.as_deref_mut())?;
        conv.summary.series += 1;
    }
    if conv.summary.series == 0 && conv.symbols.is_empty() && v1_fields {
        return Err(Location::default().err(ErrorKind::WrongVersion {
            declared: "2.0",
            found: "1.0",
        }));
    }
    if let Some(out) = out {
        out.put_slice(&conv.metadata);
    }
    Ok((conv.summary, conv.out_len))
}

/// Pass 1: the symbol table as ranges of `body`, every symbol checked for UTF-8.
fn read_symbols(body: &[u8]) -> Result<Vec<(usize, usize)>, ScanError> {
    let mut symbols = Vec::new();
    let mut series = 0;
    let mut r = Reader::new(body);
    while !r.is_empty() {
        let at = Location::series(series);
        let (field, wire) = r.key().map_err(|k| at.err(k))?;
        match field {
            4 => {
                let at = Location::default().item(Item::Symbol, symbols.len());
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                let (s, e) = r.len_range().map_err(|k| at.err(k))?;
                std::str::from_utf8(&body[s..e])
                    .map_err(|_| at.err(ErrorKind::InvalidUtf8String))?;
                if symbols.is_empty() && s != e {
                    return Err(at.err(ErrorKind::FirstSymbolNotEmpty));
                }
                symbols.push((s, e));
            }
            5 => {
                expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                r.len_range().map_err(|k| at.err(k))?;
                series += 1;
            }
            _ => r.skip(wire).map_err(|k| at.err(k))?,
        }
    }
    Ok(symbols)
}

struct Converter<'a> {
    body: &'a [u8],
    symbols: Vec<(usize, usize)>,
    limits: &'a Limits,
    /// Label references of the current series or exemplar.
    refs: Vec<u32>,
    /// The 1.0 `TimeSeries` being built (its length prefix comes first).
    series_buf: BytesMut,
    /// 1.0 `MetricMetadata` fields, appended after all series.
    metadata: BytesMut,
    summary: Summary,
    /// Bytes of 1.0 output so far (series and metadata), written or not.
    out_len: usize,
    /// The most output allowed.
    max_out: usize,
    /// False while only measuring: nothing is appended to the output or
    /// `metadata`.
    write: bool,
}

impl<'a> Converter<'a> {
    fn symbol(&self, reference: u32) -> Result<&'a [u8], ErrorKind> {
        match self.symbols.get(reference as usize) {
            Some(&(s, e)) => Ok(&self.body[s..e]),
            None => Err(ErrorKind::SymbolOutOfRange {
                reference: u64::from(reference),
                symbols: self.symbols.len(),
            }),
        }
    }

    /// Reads a `labels_refs` field (packed or a single varint) into `self.refs`.
    /// References are checked against the table per label by the callers, so
    /// the error can name the label; only u32 overflow is caught here.
    fn push_refs(&mut self, r: &mut Reader<'_>, wire: WireType) -> Result<(), ErrorKind> {
        if wire == WireType::Len {
            let mut packed = Reader::new(r.len_delimited()?);
            while !packed.is_empty() {
                self.refs
                    .push(ref_u32(packed.varint()?, self.symbols.len())?);
            }
            Ok(())
        } else {
            expect_wire(1, wire, WireType::Varint)?;
            let v = r.varint()?;
            self.refs.push(ref_u32(v, self.symbols.len())?);
            Ok(())
        }
    }

    fn series(
        &mut self,
        msg: &[u8],
        at: Location,
        out: Option<&mut BytesMut>,
    ) -> Result<(), ScanError> {
        // Validate and collect the series' label references first: they are
        // written before anything else in the 1.0 message.
        self.refs.clear();
        let mut r = Reader::new(msg);
        let (mut samples, mut histograms, mut exemplars) = (0, 0, 0);
        let mut metadata = None;
        let mut created = 0u64;
        while !r.is_empty() {
            let (field, wire) = r.key().map_err(|k| at.err(k))?;
            match field {
                1 => self.push_refs(&mut r, wire).map_err(|k| at.err(k))?,
                2 => {
                    let at = at.item(Item::Sample, samples);
                    expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                    check_sample(r.len_delimited().map_err(|k| at.err(k))?)
                        .map_err(|k| at.err(k))?;
                    samples += 1;
                }
                3 => {
                    let at = at.item(Item::Histogram, histograms);
                    expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                    check_histogram(r.len_delimited().map_err(|k| at.err(k))?)
                        .map_err(|k| at.err(k))?;
                    histograms += 1;
                }
                4 => {
                    // Exemplars are validated when they are converted below.
                    expect_wire(field, wire, WireType::Len)
                        .map_err(|k| at.item(Item::Exemplar, exemplars).err(k))?;
                    r.len_range()
                        .map_err(|k| at.item(Item::Exemplar, exemplars).err(k))?;
                    exemplars += 1;
                }
                5 => {
                    let at = at.item(Item::Metadata, 0);
                    expect_wire(field, wire, WireType::Len).map_err(|k| at.err(k))?;
                    let payload = r.len_delimited().map_err(|k| at.err(k))?;
                    metadata = Some(self.read_metadata(payload).map_err(|k| at.err(k))?);
                }
                6 => {
                    expect_wire(field, wire, WireType::Varint).map_err(|k| at.err(k))?;
                    created = r.varint().map_err(|k| at.err(k))?;
                }
                _ => r.skip(wire).map_err(|k| at.err(k))?,
            }
        }
        let name = self.check_series_labels(at)?;

        // Write the 1.0 message: labels, then the other fields in wire order.
        self.series_buf.clear();
        for pair in self.refs.chunks_exact(2) {
            let (n, v) = (self.symbol(pair[0]), self.symbol(pair[1]));
            let (Ok(n), Ok(v)) = (n, v) else { continue };
            put_label_field(&mut self.series_buf, 1, n, v);
        }
        let mut r = Reader::new(msg);
        let mut exemplar = 0;
        while !r.is_empty() {
            let (field, wire) = r.key().map_err(|k| at.err(k))?;
            match (field, wire) {
                (2, WireType::Len) | (3, WireType::Len) => {
                    let payload = r.len_delimited().map_err(|k| at.err(k))?;
                    let v1_field = if field == 2 { 2 } else { 4 };
                    put_len_prefix(&mut self.series_buf, v1_field, payload.len());
                    self.series_buf.put_slice(payload);
                }
                (4, WireType::Len) => {
                    let payload = r.len_delimited().map_err(|k| at.err(k))?;
                    self.exemplar(payload, at.item(Item::Exemplar, exemplar))?;
                    exemplar += 1;
                }
                _ => r.skip(wire).map_err(|k| at.err(k))?,
            }
        }
        if created != 0 {
            put_varint(&mut self.series_buf, CREATED_TIMESTAMP_KEY);
            put_varint(&mut self.series_buf, created);
        }
        self.grow(at, len_field_size(self.series_buf.len()))?;
        if let Some(out) = out {
            put_len_prefix(out, 1, self.series_buf.len());
            out.put_slice(&self.series_buf);
        }

        if let Some((kind, help, unit)) = metadata {
            if kind != 0 || !help.is_empty() || !unit.is_empty() {
                self.put_metadata(at, kind, name, help, unit)?;
            }
        }
        self.summary.samples += samples;
        self.summary.histograms += histograms;
        self.summary.exemplars += exemplars;
        Ok(())
    }

    /// Checks the series labels in `self.refs`; returns the metric name.
    fn check_series_labels(&self, at: Location) -> Result<&'a [u8], ScanError> {
        if self.refs.len() % 2 != 0 {
            return Err(at.err(ErrorKind::OddLabelRefs(self.refs.len())));
        }
        let count = self.refs.len() / 2;
        if count > self.limits.max_labels_per_series {
            return Err(at.err(ErrorKind::TooManyLabels {
                count,
                limit: self.limits.max_labels_per_series,
            }));
        }
        let mut prev: Option<&[u8]> = None;
        let mut metric_name: &[u8] = &[];
        for (i, pair) in self.refs.chunks_exact(2).enumerate() {
            let at = at.label(i);
            let name = self.symbol(pair[0]).map_err(|k| at.err(k))?;
            let value = self.symbol(pair[1]).map_err(|k| at.err(k))?;
            check_label(name, value, self.limits).map_err(|k| at.err(k))?;
            if let Some(prev) = prev {
                if name == prev {
                    return Err(at.err(ErrorKind::DuplicateLabelName(lossy(name))));
                }
                if name < prev {
                    return Err(at.err(ErrorKind::UnsortedLabels {
                        name: lossy(name),
                        after: lossy(prev),
                    }));
                }
            }
            if name == b"__name__" {
                metric_name = value;
            }
            prev = Some(name);
        }
        Ok(metric_name)
    }

    fn exemplar(&mut self, payload: &[u8], at: Location) -> Result<(), ScanError> {
        self.refs.clear();
        let mut r = Reader::new(payload);
        let mut rest = BytesMut::new();
        while !r.is_empty() {
            let start = r.pos();
            let (field, wire) = r.key().map_err(|k| at.err(k))?;
            match field {
                1 => {
                    self.push_refs(&mut r, wire).map_err(|k| at.err(k))?;
                    continue;
                }
                2 => expect_wire(field, wire, WireType::I64).map_err(|k| at.err(k))?,
                3 => expect_wire(field, wire, WireType::Varint).map_err(|k| at.err(k))?,
                _ => {}
            }
            r.skip(wire).map_err(|k| at.err(k))?;
            rest.put_slice(&payload[start..r.pos()]);
        }
        if self.refs.len() % 2 != 0 {
            return Err(at.err(ErrorKind::OddLabelRefs(self.refs.len())));
        }
        let mut len = rest.len();
        for (i, pair) in self.refs.chunks_exact(2).enumerate() {
            let name = self.symbol(pair[0]).map_err(|k| at.label(i).err(k))?;
            let value = self.symbol(pair[1]).map_err(|k| at.label(i).err(k))?;
            check_exemplar_label(name, value).map_err(|k| at.label(i).err(k))?;
            len += label_field_size(name, value);
        }
        put_len_prefix(&mut self.series_buf, 3, len);
        for pair in self.refs.chunks_exact(2) {
            if let (Ok(n), Ok(v)) = (self.symbol(pair[0]), self.symbol(pair[1])) {
                put_label_field(&mut self.series_buf, 1, n, v);
            }
        }
        self.series_buf.put_slice(&rest);
        Ok(())
    }

    /// `Metadata { type = 1; help_ref = 3; unit_ref = 4; }`
    fn read_metadata(&self, payload: &[u8]) -> Result<(u64, &'a [u8], &'a [u8]), ErrorKind> {
        let mut r = Reader::new(payload);
        let (mut kind, mut help, mut unit): (u64, &[u8], &[u8]) = (0, &[], &[]);
        while !r.is_empty() {
            let (field, wire) = r.key()?;
            match field {
                1 | 3 | 4 => {
                    expect_wire(field, wire, WireType::Varint)?;
                    let v = r.varint()?;
                    match field {
                        1 => kind = v,
                        3 => help = self.symbol(ref_u32(v, self.symbols.len())?)?,
                        _ => unit = self.symbol(ref_u32(v, self.symbols.len())?)?,
                    }
                }
                _ => r.skip(wire)?,
            }
        }
        Ok((kind, help, unit))
    }

    /// Counts `n` more bytes of output, refused past the limit.
    fn grow(&mut self, at: Location, n: usize) -> Result<(), ScanError> {
        self.out_len = self.out_len.saturating_add(n);
        if self.out_len > self.max_out {
            return Err(at.err(ErrorKind::ConvertsTooLarge {
                limit: self.max_out,
            }));
        }
        Ok(())
    }

    fn put_metadata(
        &mut self,
        at: Location,
        kind: u64,
        name: &[u8],
        help: &[u8],
        unit: &[u8],
    ) -> Result<(), ScanError> {
        let mut len = 1 + crate::wire::varint_len(kind) + len_field_size(name.len());
        for s in [help, unit] {
            if !s.is_empty() {
                len += len_field_size(s.len());
            }
        }
        self.grow(at, len_field_size(len))?;
        self.summary.metadata += 1;
        if !self.write {
            return Ok(());
        }
        put_len_prefix(&mut self.metadata, 3, len);
        put_varint(&mut self.metadata, 1 << 3);
        put_varint(&mut self.metadata, kind);
        put_len_prefix(&mut self.metadata, 2, name.len());
        self.metadata.put_slice(name);
        for (field, s) in [(4, help), (5, unit)] {
            if !s.is_empty() {
                put_len_prefix(&mut self.metadata, field, s.len());
                self.metadata.put_slice(s);
            }
        }
        Ok(())
    }
}

/// A symbol reference as u32; values beyond u32 cannot name any symbol.
fn ref_u32(v: u64, symbols: usize) -> Result<u32, ErrorKind> {
    u32::try_from(v).map_err(|_| ErrorKind::SymbolOutOfRange {
        reference: v,
        symbols,
    })
}

fn lossy(s: &[u8]) -> String {
    crate::error::quote(&String::from_utf8_lossy(s))
}
