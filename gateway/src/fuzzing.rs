//! The checks behind the gateway's fuzz targets (`proto/fuzz`), kept in the
//! library so that `cargo test` runs them on the checked-in corpus
//! (`gateway/tests/fuzz_corpus.rs`).
//!
//! Each takes arbitrary bytes and must never panic; beyond that:
//! - `registry_document`: a declarative document (JSON or YAML, by the first
//!   byte) that parses and validates reads back masked, and putting that
//!   read-back in its place changes nothing (`GET` then `PUT
//!   /api/v1/registry`);
//! - `admin_body`: an admin API body (JSON or YAML) applied as a create,
//!   replace or JSON merge patch of each kind to the example registry;
//! - `spill_segment`: a spill segment file scanned at recovery: what the
//!   scan keeps lies within the file, in order, below the cut.

use std::sync::OnceLock;

use crate::deliver::spill::format;
use crate::registry::model::{masked_document, Document, Kind, Registry};
use crate::registry::{ops, validate};

/// Fuzz target `registry_document`: byte 0 picks YAML (odd) or JSON.
pub fn registry_document_target(data: &[u8]) {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let Ok(doc) = Document::parse(text, flags & 1 == 1) else {
        return;
    };
    let Ok(registry) = Registry::from_document(doc) else {
        return;
    };
    if validate::validate(&registry).is_err() {
        return;
    }
    let read_back = serde_json::to_vec(&masked_document(&registry)).expect("JSON of a registry");
    let again = Document::parse(&read_back, false)
        .unwrap_or_else(|e| panic!("the masked registry does not parse again: {e:?}"));
    // PUT of what GET answered (secrets masked: "***" keeps each stored one)
    // changes nothing.
    let mut put = registry.clone();
    if let Err(e) = ops::replace_all(&mut put, again) {
        panic!("the masked registry is refused when put back: {e}");
    }
    assert!(
        put == registry,
        "putting back the masked registry changed it"
    );
}

fn example() -> &'static Registry {
    static EXAMPLE: OnceLock<Registry> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        let text = include_str!("../../examples/registry.yaml");
        let doc = Document::parse(text.as_bytes(), true).expect("the example registry parses");
        Registry::from_document(doc).expect("the example registry loads")
    })
}

/// Fuzz target `admin_body`: byte 0 picks the kind (bits 0-1), the
/// operation (bits 2-3: create, replace, patch) and YAML (bit 4); the rest is
/// the body.
pub fn admin_body_target(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let kind = Kind::ALL[usize::from(flags & 3)];
    let Ok(value) = crate::registry::model::parse_value(body, flags & 16 != 0) else {
        return;
    };
    let mut registry = example().clone();
    let existing = registry.list(kind).first().map(|o| o.id().to_owned());
    let result = match ((flags >> 2) & 3, existing) {
        (0, _) | (_, None) => ops::create(&mut registry, value, kind),
        (1, Some(id)) => ops::replace(&mut registry, kind, &id, value),
        (_, Some(id)) => ops::patch(&mut registry, kind, &id, value),
    };
    if result.is_ok() {
        // What an accepted write leaves reads back like any registry.
        let _ = validate::validate(&registry);
        let _ = masked_document(&registry);
    }
}

/// Fuzz target `spill_segment`: scan `data` as a segment file, as recovery
/// does, and read it as a ledger.
pub fn spill_segment_target(data: &[u8]) {
    let len = data.len() as u64;
    let scan = format::scan(&mut std::io::Cursor::new(data), len, 0)
        .expect("reading from memory cannot fail");
    assert!(scan.good_end <= len, "cut past the end");
    let mut last: Option<(u64, u64)> = None;
    for r in &scan.records {
        assert!(
            r.offset + r.frame_len <= scan.good_end,
            "{r:?} past the cut"
        );
        if let Some((end, seq)) = last {
            assert!(r.offset >= end, "{r:?} overlaps the record before");
            assert!(r.header.seq > seq, "{r:?} out of order");
        }
        last = Some((r.offset + r.frame_len, r.header.seq));
    }
    for &c in &scan.corrupt {
        assert!(c < len, "corrupt frame at {c} past the end");
    }
    let _ = format::decode_ledger_file(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzing_the_example_registry_takes_the_whole_path() {
        // The seed of `registry_document` is the example: it validates, so
        // the target checks its read-back (and would fail if that changed it).
        assert!(validate::validate(example()).is_ok());
        let mut seed = vec![1u8];
        seed.extend_from_slice(include_bytes!("../../examples/registry.yaml"));
        registry_document_target(&seed);
    }
}
