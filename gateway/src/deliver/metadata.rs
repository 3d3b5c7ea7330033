//! The metric family metadata Fanout has seen (type, help, unit).
//!
//! Remote-write 1.0 carries metadata per request (`WriteRequest.metadata`,
//! sent by Prometheus once a minute in requests of their own), 2.0 per
//! series; 2.0 input is converted to 1.0 with its metadata as 1.0 entries.
//! Every accepted request that holds metadata updates this table, which
//! `protocol: V2` targets read to give each series its family's metadata.
//! At most [`MAX_FAMILIES`] families are kept (a new family beyond that is
//! not recorded; known ones keep being updated), so its memory is bounded
//! whatever the senders send.

use std::collections::HashMap;
use std::sync::RwLock;

use fanout_proto::v2write::{FamilyMetadata, MetadataLookup};
use fanout_proto::wire::{Reader, WireType};

/// Most families kept.
pub const MAX_FAMILIES: usize = 100_000;

/// Suffixes of series names that belong to a family named without them.
const SUFFIXES: [&[u8]; 8] = [
    b"_bucket",
    b"_sum",
    b"_count",
    b"_total",
    b"_created",
    b"_gcount",
    b"_gsum",
    b"_info",
];

/// Family name → metadata.
#[derive(Debug, Default)]
pub struct MetadataCache {
    families: RwLock<HashMap<Box<[u8]>, FamilyMetadata, foldhash::fast::RandomState>>,
}

impl MetadataCache {
    /// Records the `MetricMetadata` entries (field 3) of a decompressed,
    /// already validated 1.0 body. Entries without a family name are skipped.
    pub fn record(&self, body: &[u8]) {
        let mut r = Reader::new(body);
        while !r.is_empty() {
            let Ok((field, wire)) = r.key() else { return };
            if field != 3 || wire != WireType::Len {
                if r.skip(wire).is_err() {
                    return;
                }
                continue;
            }
            let Ok(entry) = r.len_delimited() else { return };
            if let Some((name, meta)) = parse_entry(entry) {
                self.put(name, meta);
            }
        }
    }

    fn put(&self, name: &[u8], meta: FamilyMetadata) {
        if let Ok(f) = self.families.read() {
            if f.get(name) == Some(&meta) {
                return;
            }
        }
        if let Ok(mut f) = self.families.write() {
            if f.len() < MAX_FAMILIES || f.contains_key(name) {
                f.insert(name.into(), meta);
            }
        }
    }

    /// Families known.
    pub fn len(&self) -> usize {
        self.families.read().map_or(0, |f| f.len())
    }

    /// True when no family is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MetadataLookup for MetadataCache {
    fn family_of(&self, name: &[u8]) -> Option<FamilyMetadata> {
        let f = self.families.read().ok()?;
        if f.is_empty() {
            return None;
        }
        if let Some(m) = f.get(name) {
            return Some(m.clone());
        }
        SUFFIXES
            .iter()
            .find_map(|s| name.strip_suffix(*s).and_then(|family| f.get(family)))
            .cloned()
    }
}

/// A 1.0 `MetricMetadata`: type (1), family name (2), help (4), unit (5).
fn parse_entry(m: &[u8]) -> Option<(&[u8], FamilyMetadata)> {
    let mut r = Reader::new(m);
    let (mut name, mut meta) = (&b""[..], FamilyMetadata::default());
    while !r.is_empty() {
        match r.key().ok()? {
            (1, WireType::Varint) => meta.kind = r.varint().ok()? as i32,
            (2, WireType::Len) => name = r.len_delimited().ok()?,
            (4, WireType::Len) => {
                meta.help = String::from_utf8(r.len_delimited().ok()?.to_vec()).ok()?
            }
            (5, WireType::Len) => {
                meta.unit = String::from_utf8(r.len_delimited().ok()?.to_vec()).ok()?
            }
            (_, wire) => r.skip(wire).ok()?,
        }
    }
    (!name.is_empty()).then_some((name, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::v1;
    use prost::Message;

    #[test]
    fn families_are_recorded_and_found_by_series_name() {
        let c = MetadataCache::default();
        let req = v1::WriteRequest {
            timeseries: vec![],
            metadata: vec![
                v1::MetricMetadata {
                    r#type: 3,
                    metric_family_name: "http_latency_seconds".into(),
                    help: "Latency.".into(),
                    unit: "seconds".into(),
                },
                v1::MetricMetadata {
                    r#type: 1,
                    metric_family_name: String::new(),
                    help: "no name".into(),
                    unit: String::new(),
                },
            ],
        };
        c.record(&req.encode_to_vec());
        assert_eq!(c.len(), 1);
        let want = FamilyMetadata {
            kind: 3,
            help: "Latency.".into(),
            unit: "seconds".into(),
        };
        assert_eq!(c.family_of(b"http_latency_seconds"), Some(want.clone()));
        assert_eq!(c.family_of(b"http_latency_seconds_bucket"), Some(want));
        assert_eq!(c.family_of(b"http_latency"), None);
        assert_eq!(c.family_of(b"other_total"), None);
    }
}
