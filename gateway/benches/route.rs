//! Routing alone: [`Scratch::route`] (catalog, attribution, variant and lane
//! of every series) and route + encode, for a 2,000-series request from a
//! cluster with many Deployments, each exported to 3 targets in 2 variants
//! (two Workspace exports share labels, the third differs), 8 lanes each.
//! No IO: this is the part of a request that a profile at saturation showed
//! as `route::inspect` plus the per-series map lookups.
//!
//! Run: `cargo bench -p fanout-gateway --bench route -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use fanout_gateway::deliver::accounting::Owners;
use fanout_gateway::deliver::limits::SeriesLimits;
use fanout_gateway::deliver::route::{Plan, Rules, Scratch};
use fanout_gateway::deliver::Catalog;
use fanout_gateway::registry::{ops, Document, Registry, Snapshot};

const SERIES: usize = 2_000;
const LANES: u32 = 8;

/// A registry of `deployments` Deployments on cluster c1 (and as many on
/// c2, so lookups run in a realistically sized snapshot).
fn snapshot(deployments: usize) -> Snapshot {
    let mut yaml = String::from(
        "clusters:\n  - {id: c1, organizationId: o1, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: tok}\n\
         \x20 - {id: c2, organizationId: o1, cloudProvider: aws, cloudRegion: us-east-2, ingestToken: tok2}\n\
         workspaces:\n  - {id: ws, organizationId: o2, name: w}\ndeployments:\n",
    );
    for d in 0..deployments {
        yaml.push_str(&format!(
            "  - {{id: cl{d:04}x9k2m0001deploy, workspaceId: ws, clusterId: c1, namespace: elementary-zenith-{}, type: HOSTED, name: d{d}}}\n",
            7243 + d
        ));
        yaml.push_str(&format!(
            "  - {{id: other{d:04}, workspaceId: ws, clusterId: c2, namespace: other-{d}, type: HOSTED, name: o{d}}}\n",
        ));
    }
    yaml.push_str(
        "metricsExports:\n\
         \x20 - {id: a, objectKey: a, scope: WORKSPACE, scopeEntityId: ws, autoLinkDeployments: true, metricsExport: {endpoint: 'http://127.0.0.1:1/a', labels: {env: dev}}}\n\
         \x20 - {id: b, objectKey: b, scope: WORKSPACE, scopeEntityId: ws, autoLinkDeployments: true, metricsExport: {endpoint: 'http://127.0.0.1:1/b', labels: {env: prod}}}\n\
         \x20 - {id: c, objectKey: c, scope: WORKSPACE, scopeEntityId: ws, autoLinkDeployments: true, metricsExport: {endpoint: 'http://127.0.0.1:1/c', labels: {env: dev}}}\n",
    );
    let doc = Document::parse(yaml.as_bytes(), true).expect("valid document");
    let mut registry = Registry::default();
    ops::replace_all(&mut registry, doc).expect("applies");
    fanout_gateway::registry::validate(&registry).expect("valid registry");
    Snapshot::build(Arc::new(registry), 1, Arc::from(&b"salt"[..]))
}

fn bench(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let limits = SeriesLimits::new(None, None);
    let mut group = c.benchmark_group("route_2000_series");
    group.throughput(Throughput::Elements(SERIES as u64));
    for deployments in [10usize, 1_000] {
        let snap = snapshot(deployments);
        let plan: Plan<u32> = Plan::build(&snap, &Owners::default(), |_| Some((0, LANES)));
        assert_eq!(plan.variants().len(), 2 * 2 * deployments);
        let req = fanout_proto::testdata::realistic_request(SERIES, deployments);
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut series = Vec::new();
        fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series).expect("valid");
        let mut scratch = Scratch::default();
        let rules = Rules {
            snapshot: &snap,
            catalog: &catalog,
            limits: &limits,
        };
        group.bench_function(format!("route/{deployments}_deployments"), |b| {
            b.iter(|| scratch.route(&plan, &rules, "c1", &body, &series))
        });
        group.bench_function(format!("route_encode/{deployments}_deployments"), |b| {
            b.iter(|| {
                scratch.route(&plan, &rules, "c1", &body, &series);
                scratch.encode(&plan, &body, &series)
            })
        });
    }
    // The scan that precedes routing, for scale.
    let req = fanout_proto::testdata::realistic_request(SERIES, 1_000);
    let body = Bytes::from(prost::Message::encode_to_vec(&req));
    let mut series = Vec::new();
    group.bench_function("scan", |b| {
        b.iter(|| fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
