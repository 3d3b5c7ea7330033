//! Runs one codec pipeline a fixed number of times on the realistic
//! 2,000-series request, for instruction counting under callgrind, which is
//! repeatable on a shared, noisy machine where wall time is not:
//!
//! ```sh
//! cargo build --release -p fanout-proto --example codec_cost
//! for p in setup scan scan_encode prost_decode prost_decode_encode v2_rewrite v2_rewrite_metadata; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/codec_cost $p 20 2>&1 | grep 'refs:'
//! done
//! ```
//! Subtract `setup` (building the request) from each, divide by 20 × 2,000.
//! `v2_rewrite` is the 2.0 egress rewrite of the request (`v2write::from_v1`)
//! without metadata; `v2_rewrite_metadata` with every family's metadata
//! known (type, help and unit), as a gateway that forwards metadata has.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use fanout_proto::encode::{Encoder, LabelSet};
use fanout_proto::scan::scan_v1;
use fanout_proto::v2write::{from_v1, FamilyMetadata, MetadataLookup, NoMetadata};
use fanout_proto::{testdata, v1, Limits};
use prost::Message;
use std::hint::black_box;

/// Every family known, as the gateway's metadata table answers (owned
/// strings per call).
struct EveryFamily;

impl MetadataLookup for EveryFamily {
    fn family_of(&self, name: &[u8]) -> Option<FamilyMetadata> {
        Some(FamilyMetadata {
            kind: 2,
            help: format!("Help of {}.", String::from_utf8_lossy(name)),
            unit: "seconds".into(),
        })
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pipeline = args.next().unwrap_or_else(|| "setup".into());
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);

    let body = Bytes::from(testdata::realistic_request(2_000, 10).encode_to_vec());
    let limits = Limits::default();
    let inject = LabelSet::new([
        ("cloud_provider", "aws"),
        ("cloud_region", "us-east-1"),
        ("cluster_organization_id", "clorg0001"),
        ("deploymentId", "cl0003x9k2m0001deploy"),
        ("namespace", "elementary-zenith-7246"),
        ("organizationId", "clorg0001"),
        ("workspaceId", "clws0001"),
    ])
    .expect("labels");
    let injected: Vec<v1::Label> = inject
        .iter()
        .map(|(n, v)| v1::Label {
            name: String::from_utf8_lossy(n).into_owned(),
            value: String::from_utf8_lossy(v).into_owned(),
        })
        .collect();
    let mut series = Vec::with_capacity(2_000);
    let mut encoder = Encoder::new();
    let mut out = BytesMut::with_capacity(body.len() * 2);

    let mut v2 = Vec::with_capacity(body.len());
    let mut total = 0usize;
    for _ in 0..iterations {
        total += match pipeline.as_str() {
            "setup" => 0,
            "scan" => {
                scan_v1(black_box(&body), &limits, &mut series)
                    .expect("valid")
                    .series
            }
            "scan_encode" => {
                scan_v1(black_box(&body), &limits, &mut series).expect("valid");
                out.clear();
                for s in &series {
                    encoder.encode_series(s.view(&body), &inject, &mut out);
                }
                out.len()
            }
            "prost_decode" => v1::WriteRequest::decode(black_box(&body[..]))
                .expect("valid")
                .timeseries
                .len(),
            "prost_decode_encode" => {
                let mut req = v1::WriteRequest::decode(black_box(&body[..])).expect("valid");
                for ts in &mut req.timeseries {
                    ts.labels
                        .retain(|l| inject.get(l.name.as_bytes()).is_none());
                    ts.labels.extend(injected.iter().cloned());
                    ts.labels.sort_by(|a, b| a.name.cmp(&b.name));
                }
                req.encode_to_vec().len()
            }
            "v2_rewrite" => {
                from_v1(black_box(&body), &NoMetadata, &mut v2).expect("valid");
                v2.len()
            }
            "v2_rewrite_metadata" => {
                from_v1(black_box(&body), &EveryFamily, &mut v2).expect("valid");
                v2.len()
            }
            other => {
                eprintln!("unknown pipeline {other:?}");
                std::process::exit(2);
            }
        };
    }
    black_box(total);
}
