//! Errors of the scanner and the 2.0 reader: what was wrong, and where.
//!
//! A [`ScanError`] is an [`ErrorKind`] plus a [`Location`]; it displays as the
//! location path followed by the kind, e.g. `timeseries 12: label 3: truncated
//! varint`, which is what ingest puts in the body of a 400 or 413 response.
//! Indexes are zero-based, counted in the order the items appear on the wire.

use std::fmt;

use crate::wire::WireType;

/// Where in a request an error was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Index of the series (`timeseries N`).
    pub series: Option<u32>,
    /// The item within the series (`sample N`, `exemplar N`, ...), or a
    /// request-level item (`metadata N`, `symbol N`).
    pub item: Option<(Item, u32)>,
    /// Index of the label within the series or the exemplar (`label N`).
    pub label: Option<u32>,
}

/// A part of a request that errors can point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A float sample of a series.
    Sample,
    /// An exemplar of a series.
    Exemplar,
    /// A native histogram of a series.
    Histogram,
    /// A metadata entry (1.0: of the request; 2.0: of a series).
    Metadata,
    /// An entry of the 2.0 symbol table.
    Symbol,
}

impl Item {
    fn name(self) -> &'static str {
        match self {
            Item::Sample => "sample",
            Item::Exemplar => "exemplar",
            Item::Histogram => "histogram",
            Item::Metadata => "metadata",
            Item::Symbol => "symbol",
        }
    }
}

/// Which string of a label was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelPart {
    /// The label name.
    Name,
    /// The label value.
    Value,
}

/// What was wrong with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A varint ran past the end of its message.
    TruncatedVarint,
    /// A varint longer than ten bytes or larger than 64 bits.
    VarintOverflow,
    /// A fixed-size value ran past the end of its message (4 or 8 bytes).
    TruncatedFixed(u8),
    /// A key with wire type 3, 4, 6 or 7.
    InvalidWireType(u8),
    /// A key with field number 0 (or beyond the protobuf range).
    InvalidFieldNumber(u64),
    /// A known field with the wrong wire type.
    WrongWireType {
        /// The field number.
        field: u32,
        /// The wire type the schema gives it.
        expected: WireType,
        /// The wire type on the wire.
        found: WireType,
    },
    /// A length prefix larger than what is left of the enclosing message.
    LengthPastEnd {
        /// The declared length.
        len: u64,
        /// Bytes left in the enclosing message.
        remaining: usize,
    },
    /// A string that is not UTF-8.
    InvalidUtf8(LabelPart),
    /// A string other than a label (metadata text, a 2.0 symbol) that is not UTF-8.
    InvalidUtf8String,
    /// A label whose name is empty.
    EmptyLabelName,
    /// Two labels of one series with the same name.
    DuplicateLabelName(String),
    /// 2.0 labels not sorted by name.
    UnsortedLabels {
        /// The name that came too late.
        name: String,
        /// The name it came after.
        after: String,
    },
    /// A 2.0 `labels_refs` list with an odd length.
    OddLabelRefs(usize),
    /// A 2.0 symbol table whose first symbol is not the empty string (the
    /// spec requires `symbols[0] == ""`).
    FirstSymbolNotEmpty,
    /// No series, and fields of the other protocol version: the body does
    /// not match the version its Content-Type names.
    WrongVersion {
        /// The version the Content-Type names (`"1.0"` or `"2.0"`).
        declared: &'static str,
        /// The version the body's fields belong to.
        found: &'static str,
    },
    /// A 2.0 symbol reference beyond the symbol table.
    SymbolOutOfRange {
        /// The reference.
        reference: u64,
        /// Size of the symbol table.
        symbols: usize,
    },
    /// A 2.0 request whose 1.0 form would be larger than the limit.
    ConvertsTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// More series than the limit.
    TooManySeries {
        /// The limit.
        limit: usize,
    },
    /// More labels in one series than the limit.
    TooManyLabels {
        /// Labels in the series.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A label name longer than the limit.
    LabelNameTooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A label value longer than the limit.
    LabelValueTooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Longest label name quoted in an error message.
const QUOTE_MAX: usize = 64;

/// A label name as it may appear in an error message: at most [`QUOTE_MAX`] bytes.
pub(crate) fn quote(name: &str) -> String {
    if name.len() <= QUOTE_MAX {
        return name.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &name[..end])
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::TruncatedVarint => f.write_str("truncated varint"),
            ErrorKind::VarintOverflow => f.write_str("varint overflows 64 bits"),
            ErrorKind::TruncatedFixed(n) => write!(f, "truncated {}-bit value", u32::from(*n) * 8),
            ErrorKind::InvalidWireType(t) => write!(f, "invalid wire type {t}"),
            ErrorKind::InvalidFieldNumber(n) => write!(f, "invalid field number {n}"),
            ErrorKind::WrongWireType {
                field,
                expected,
                found,
            } => write!(
                f,
                "field {field}: wire type {}, expected {}",
                found.describe(),
                expected.describe()
            ),
            ErrorKind::LengthPastEnd { len, remaining } => write!(
                f,
                "length {len} runs past the end of the message ({remaining} bytes left)"
            ),
            ErrorKind::InvalidUtf8(LabelPart::Name) => f.write_str("label name is not valid UTF-8"),
            ErrorKind::InvalidUtf8(LabelPart::Value) => {
                f.write_str("label value is not valid UTF-8")
            }
            ErrorKind::InvalidUtf8String => f.write_str("string is not valid UTF-8"),
            ErrorKind::EmptyLabelName => f.write_str("empty label name"),
            ErrorKind::DuplicateLabelName(name) => write!(f, "duplicate label name {name:?}"),
            ErrorKind::UnsortedLabels { name, after } => {
                write!(f, "labels not sorted: {name:?} after {after:?}")
            }
            ErrorKind::OddLabelRefs(n) => write!(f, "odd number of label references ({n})"),
            ErrorKind::FirstSymbolNotEmpty => {
                f.write_str("the first symbol must be the empty string")
            }
            ErrorKind::WrongVersion { declared, found } => write!(
                f,
                "the Content-Type says remote-write {declared}, but the body holds a remote-write \
                 {found} message (no {declared} series; set the Content-Type that matches the body)"
            ),
            ErrorKind::SymbolOutOfRange { reference, symbols } => write!(
                f,
                "symbol reference {reference} out of range ({symbols} symbols)"
            ),
            ErrorKind::ConvertsTooLarge { limit } => write!(
                f,
                "the request expands to more than {limit} bytes as remote-write 1.0 (limit max_decompressed_body)"
            ),
            ErrorKind::TooManySeries { limit } => {
                write!(f, "more than {limit} series in one request (limit max_series)")
            }
            ErrorKind::TooManyLabels { count, limit } => write!(
                f,
                "{count} labels, more than the limit of {limit} (limit max_labels_per_series)"
            ),
            ErrorKind::LabelNameTooLong { len, limit } => write!(
                f,
                "label name of {len} bytes, longer than the limit of {limit} (limit max_label_name_length)"
            ),
            ErrorKind::LabelValueTooLong { len, limit } => write!(
                f,
                "label value of {len} bytes, longer than the limit of {limit} (limit max_label_value_length)"
            ),
        }
    }
}

/// An error found while scanning or reading a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanError {
    /// Where it was found.
    pub location: Location,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl ScanError {
    /// True when a configured limit was exceeded (ingest answers 413), false
    /// for malformed input (400).
    pub fn is_limit(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::TooManySeries { .. }
                | ErrorKind::ConvertsTooLarge { .. }
                | ErrorKind::TooManyLabels { .. }
                | ErrorKind::LabelNameTooLong { .. }
                | ErrorKind::LabelValueTooLong { .. }
        )
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location {
            series,
            item,
            label,
        } = self.location;
        if let Some(series) = series {
            write!(f, "timeseries {series}: ")?;
        }
        if let Some((item, index)) = item {
            write!(f, "{} {index}: ", item.name())?;
        }
        if let Some(label) = label {
            write!(f, "label {label}: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ScanError {}

impl Location {
    /// The location of series `index`.
    pub fn series(index: usize) -> Location {
        Location {
            series: Some(index as u32),
            ..Location::default()
        }
    }

    /// This location, narrowed to an item of the series.
    pub fn item(self, item: Item, index: usize) -> Location {
        Location {
            item: Some((item, index as u32)),
            ..self
        }
    }

    /// This location, narrowed to a label.
    pub fn label(self, index: usize) -> Location {
        Location {
            label: Some(index as u32),
            ..self
        }
    }

    /// Attaches this location to an error kind.
    pub fn err(self, kind: ErrorKind) -> ScanError {
        ScanError {
            location: self,
            kind,
        }
    }
}
