//! Request bodies: positions `[start, end)` of a cluster's stream as a
//! snappy-compressed remote-write 1.0 or 2.0 body. Which series a position
//! is comes from the scenario (its round order, [`crate::scenario`]); its
//! value and timestamp from [`crate::identity`]. Labels of series that do
//! not churn are encoded once per run and shared by every builder;
//! churning series' labels are cached per pod generation.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::Message as _;

use super::Protocol;
use crate::identity::{SampleId, SeriesId};
use crate::scenario::{ClusterModel, Scenario, ScenarioError};
use fanout_proto::wire::put_varint;

/// Builds request bodies for one scenario (one per worker: it keeps buffers).
pub struct RequestBuilder {
    scenario: Arc<Scenario>,
    models: Arc<Vec<ClusterModel>>,
    encoded: Arc<Vec<Vec<Option<Bytes>>>>,
    churn_cache: HashMap<(u32, u32, u32), Bytes>,
    raw: Vec<u8>,
    compressed: Vec<u8>,
}

impl RequestBuilder {
    /// Prepares every cluster's series (labels encoded once).
    pub fn new(scenario: Scenario) -> Result<RequestBuilder, ScenarioError> {
        scenario.validate()?;
        let models: Vec<ClusterModel> = (0..scenario.clusters)
            .map(|c| scenario.cluster_model(c))
            .collect();
        let encoded = models
            .iter()
            .map(|m| {
                m.series
                    .iter()
                    .map(|t| t.labels.as_ref().map(|l| encode_labels(l)))
                    .collect()
            })
            .collect();
        Ok(RequestBuilder {
            scenario: Arc::new(scenario),
            models: Arc::new(models),
            encoded: Arc::new(encoded),
            churn_cache: HashMap::new(),
            raw: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// Another builder sharing the prepared series.
    pub fn fork(&self) -> RequestBuilder {
        RequestBuilder {
            scenario: self.scenario.clone(),
            models: self.models.clone(),
            encoded: self.encoded.clone(),
            churn_cache: HashMap::new(),
            raw: Vec::new(),
            compressed: Vec::new(),
        }
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The snappy-compressed body for positions `[start, end)` of `cluster`,
    /// stamped with timestamp `ts_ms`.
    pub fn body(
        &mut self,
        protocol: Protocol,
        cluster: u32,
        start: u64,
        end: u64,
        ts_ms: i64,
    ) -> Bytes {
        match protocol {
            Protocol::V1 => self.body_v1(cluster, start, end, ts_ms),
            Protocol::V2 => self.body_v2(cluster, start, end, ts_ms),
        }
        fanout_proto::snappy::compress_into(&self.raw, &mut self.compressed);
        Bytes::copy_from_slice(&self.compressed)
    }

    fn sample(&self, cluster: u32, p: u64) -> SampleId {
        let n = self.scenario.series_per_cluster().max(1);
        SampleId {
            id: SeriesId {
                cluster,
                series: (p % n) as u32,
            },
            seq: (p / n) as u32,
        }
    }

    fn labels_bytes(&mut self, s: SampleId) -> Bytes {
        let c = s.id.cluster as usize;
        if let Some(b) = self.encoded[c]
            .get(s.id.series as usize)
            .and_then(|x| x.clone())
        {
            return b;
        }
        let generation = s.seq / self.scenario.churn_rounds.max(1);
        let key = (s.id.cluster, s.id.series, generation);
        if let Some(b) = self.churn_cache.get(&key) {
            return b.clone();
        }
        let labels = self
            .scenario
            .series_labels(&self.models[c], s.id.series, s.seq)
            .unwrap_or_default();
        let b = encode_labels(&labels);
        if self.churn_cache.len() > 100_000 {
            self.churn_cache.clear();
        }
        self.churn_cache.insert(key, b.clone());
        b
    }

    fn body_v1(&mut self, cluster: u32, start: u64, end: u64, ts: i64) {
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        for p in start..end {
            let s = self.sample(cluster, p);
            let labels = self.labels_bytes(s);
            // Sample { 1: double value, 2: int64 timestamp }
            let sample_len = 1 + 8 + 1 + fanout_proto::wire::varint_len(ts as u64);
            let ts_len =
                labels.len() + 1 + fanout_proto::wire::varint_len(sample_len as u64) + sample_len;
            raw.put_u8(0x0a);
            put_varint(&mut raw, ts_len as u64);
            raw.extend_from_slice(&labels);
            raw.put_u8(0x12);
            put_varint(&mut raw, sample_len as u64);
            raw.put_u8(0x09);
            raw.put_f64_le(s.to_value());
            raw.put_u8(0x10);
            put_varint(&mut raw, ts as u64);
        }
        self.raw = raw;
    }

    fn body_v2(&mut self, cluster: u32, start: u64, end: u64, ts: i64) {
        use fanout_proto::v2;
        let mut symbols: Vec<String> = vec![String::new()];
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut intern = |s: &str| -> u32 {
            if let Some(i) = index.get(s) {
                return *i;
            }
            let i = symbols.len() as u32;
            symbols.push(s.to_owned());
            index.insert(s.to_owned(), i);
            i
        };
        let mut timeseries = Vec::with_capacity((end - start) as usize);
        for p in start..end {
            let s = self.sample(cluster, p);
            let labels = self
                .scenario
                .series_labels(&self.models[cluster as usize], s.id.series, s.seq)
                .unwrap_or_default();
            let mut refs = Vec::with_capacity(labels.len() * 2);
            for (k, v) in &labels {
                refs.push(intern(k));
                refs.push(intern(v));
            }
            timeseries.push(v2::TimeSeries {
                labels_refs: refs,
                samples: vec![v2::Sample {
                    value: s.to_value(),
                    timestamp: ts,
                }],
                ..Default::default()
            });
        }
        let req = v2::Request {
            symbols,
            timeseries,
        };
        self.raw.clear();
        // Encoding into a Vec cannot run out of space.
        let _ = req.encode(&mut self.raw);
    }
}

/// Protobuf bytes of repeated `Label` fields (field 1 of `TimeSeries`).
fn encode_labels(labels: &[(String, String)]) -> Bytes {
    let mut out = Vec::new();
    for (k, v) in labels {
        let len = 1
            + fanout_proto::wire::varint_len(k.len() as u64)
            + k.len()
            + 1
            + fanout_proto::wire::varint_len(v.len() as u64)
            + v.len();
        out.put_u8(0x0a);
        put_varint(&mut out, len as u64);
        out.put_u8(0x0a);
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        out.put_u8(0x12);
        put_varint(&mut out, v.len() as u64);
        out.extend_from_slice(v.as_bytes());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::v1;

    use crate::scenario::Scenario;

    fn small() -> Scenario {
        Scenario {
            clusters: 2,
            deployments: 2,
            dags: 2,
            tasks: 2,
            dag_files: 1,
            pools: 1,
            pods: 4,
            task_pods: 1,
            churn_rounds: 2,
            deployment_id_label: true,
            ..Scenario::default()
        }
    }

    #[test]
    fn v1_body_decodes_with_prost_and_carries_identities() {
        let s = small();
        let mut b = RequestBuilder::new(s.clone()).unwrap();
        let n = s.series_per_cluster();
        let body = b.body(Protocol::V1, 1, n - 3, n + 5, 1_700_000_000_123);
        let raw = fanout_proto::snappy::decompress(&body, 1 << 30).unwrap();
        let req = v1::WriteRequest::decode(raw).unwrap();
        assert_eq!(req.timeseries.len(), 8);
        let model = s.cluster_model(1);
        for (i, ts) in req.timeseries.iter().enumerate() {
            let p = n - 3 + i as u64;
            let id = SampleId::from_value(ts.samples[0].value).unwrap();
            assert_eq!(
                id.id,
                SeriesId {
                    cluster: 1,
                    series: (p % n) as u32
                }
            );
            assert_eq!(u64::from(id.seq), p / n);
            assert_eq!(ts.samples[0].timestamp, 1_700_000_000_123);
            let labels: Vec<(String, String)> = ts
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            assert_eq!(Some(labels), s.series_labels(&model, id.id.series, id.seq));
        }
    }

    #[test]
    fn v2_body_decodes_to_the_same_series() {
        let s = small();
        let mut b = RequestBuilder::new(s.clone()).unwrap();
        let body = b.body(Protocol::V2, 0, 0, 50, 42);
        let raw = fanout_proto::snappy::decompress(&body, 1 << 30).unwrap();
        let req = fanout_proto::v2::Request::decode(raw).unwrap();
        assert_eq!(req.timeseries.len(), 50);
        let model = s.cluster_model(0);
        for (i, ts) in req.timeseries.iter().enumerate() {
            let labels: Vec<(String, String)> = ts
                .labels_refs
                .chunks(2)
                .map(|p| {
                    (
                        req.symbols[p[0] as usize].clone(),
                        req.symbols[p[1] as usize].clone(),
                    )
                })
                .collect();
            assert_eq!(Some(labels), s.series_labels(&model, i as u32, 0));
        }
    }
}
