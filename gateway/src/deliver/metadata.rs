//! The metric family metadata Fanout has seen (type, help, unit).
//!
//! Remote-write 1.0 carries metadata per request (`WriteRequest.metadata`,
//! sent by Prometheus once a minute in requests of their own), 2.0 per
//! series; 2.0 input is converted to 1.0 with its metadata as 1.0 entries.
//! Every accepted request that holds metadata updates this table, with the
//! cluster that sent it. `protocol: V2` targets read it to give each series
//! its family's metadata; 1.0 targets get it forwarded in requests of their
//! own ([`MetadataCache::requests_for`], sent by the delivery service): every `--metadata-send-interval` (1m, as Prometheus'
//! `metadata_config.send_interval`), each target with `sendMetadata` (the
//! default) is sent, once, every family that passes the catalog and was sent
//! by a cluster of one of its Deployments; never with the batches.
//! At most [`MAX_FAMILIES`] families are kept (a new family beyond that is
//! not recorded; known ones keep being updated), and at most
//! [`MAX_CLUSTERS`] clusters per family, so its memory is bounded whatever
//! the senders send.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fanout_proto::v2write::{FamilyMetadata, MetadataLookup};
use fanout_proto::wire::{put_len_prefix, put_varint, Reader, WireType};

/// Most families kept.
pub const MAX_FAMILIES: usize = 100_000;
/// Most clusters remembered per family.
pub const MAX_CLUSTERS: usize = 64;
/// Most metadata entries per forwarded request (Prometheus' default
/// `metadata_config.max_samples_per_send`).
pub const ENTRIES_PER_REQUEST: usize = 2000;

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

/// Family name → metadata and the clusters that sent it.
#[derive(Debug, Default)]
pub struct MetadataCache {
    families: RwLock<HashMap<Box<[u8]>, Family, foldhash::fast::RandomState>>,
}

#[derive(Debug, Clone)]
struct Family {
    meta: FamilyMetadata,
    clusters: Vec<Arc<str>>,
}

impl MetadataCache {
    /// Records the `MetricMetadata` entries (field 3) of a decompressed,
    /// already validated 1.0 body. Entries without a family name are skipped.
    pub fn record(&self, body: &[u8], cluster: &str) {
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
                self.put(name, meta, cluster);
            }
        }
    }

    fn put(&self, name: &[u8], meta: FamilyMetadata, cluster: &str) {
        if let Ok(f) = self.families.read() {
            if f.get(name)
                .is_some_and(|k| k.meta == meta && k.clusters.iter().any(|c| c.as_ref() == cluster))
            {
                return;
            }
        }
        if let Ok(mut f) = self.families.write() {
            if let Some(k) = f.get_mut(name) {
                k.meta = meta;
                if k.clusters.len() < MAX_CLUSTERS
                    && !k.clusters.iter().any(|c| c.as_ref() == cluster)
                {
                    k.clusters.push(Arc::from(cluster));
                }
            } else if f.len() < MAX_FAMILIES {
                let clusters = vec![Arc::from(cluster)];
                f.insert(name.into(), Family { meta, clusters });
            }
        }
    }

    /// The families sent by one of `clusters` that `admit` takes, as 1.0
    /// `WriteRequest` bodies (uncompressed) of at most
    /// [`ENTRIES_PER_REQUEST`] entries each, sorted by name.
    pub fn requests_for(&self, clusters: &[&str], admit: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let Ok(f) = self.families.read() else {
            return Vec::new();
        };
        let mut names: Vec<(&[u8], &Family)> = f
            .iter()
            .filter(|(name, k)| {
                admit(name) && k.clusters.iter().any(|c| clusters.contains(&c.as_ref()))
            })
            .map(|(n, k)| (n.as_ref(), k))
            .collect();
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        names
            .chunks(ENTRIES_PER_REQUEST)
            .map(|chunk| {
                let mut body = Vec::new();
                for (name, k) in chunk {
                    let mut e = Vec::new();
                    if k.meta.kind != 0 {
                        put_varint(&mut e, 1 << 3);
                        put_varint(&mut e, k.meta.kind as u64);
                    }
                    for (field, text) in [
                        (2, *name),
                        (4, k.meta.help.as_bytes()),
                        (5, k.meta.unit.as_bytes()),
                    ] {
                        if !text.is_empty() {
                            put_len_prefix(&mut e, field, text.len());
                            e.extend_from_slice(text);
                        }
                    }
                    put_len_prefix(&mut body, 3, e.len());
                    body.extend_from_slice(&e);
                }
                body
            })
            .collect()
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
    fn knows_any(&self) -> bool {
        !self.is_empty()
    }

    fn family_of(&self, name: &[u8]) -> Option<FamilyMetadata> {
        let f = self.families.read().ok()?;
        if f.is_empty() {
            return None;
        }
        if let Some(k) = f.get(name) {
            return Some(k.meta.clone());
        }
        SUFFIXES
            .iter()
            .find_map(|s| name.strip_suffix(*s).and_then(|family| f.get(family)))
            .map(|k| k.meta.clone())
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
        c.record(&req.encode_to_vec(), "cl-a");
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

        // Forwarded to the targets of the clusters that sent it, as 1.0.
        assert!(c.requests_for(&["cl-b"], |_| true).is_empty());
        assert!(c.requests_for(&["cl-a"], |_| false).is_empty());
        let bodies = c.requests_for(&["cl-b", "cl-a"], |_| true);
        assert_eq!(bodies.len(), 1);
        let sent = v1::WriteRequest::decode(bodies[0].as_slice()).unwrap();
        assert!(sent.timeseries.is_empty());
        assert_eq!(sent.metadata, req.metadata[..1]);
    }
}
