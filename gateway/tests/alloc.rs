//! The delivery hot path (attribution, catalog, label stamping, encode and
//! enqueue on every target) allocates a constant number of times per request,
//! not per series or sample: after warm-up, a 2,000-series request allocates
//! exactly as often as a 200-series one.
//!
//! Counted with a counting global allocator (`stats_alloc`) around
//! `FanoutDelivery::submit` on a current-thread runtime, with the targets
//! paused so no sender runs in between. Building the request (ingest's work)
//! happens outside the measured region.

use std::alloc::System;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use fanout_gateway::deliver::{
    Accepted, Catalog, Delivery, FanoutDelivery, MemoryBudget, MemoryPermit, Settings,
};
use fanout_gateway::registry::{ops, Document, Registry, Snapshot};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DEPLOYMENTS: usize = 4;

fn snapshot() -> Snapshot {
    let mut yaml = String::from(
        "clusters:\n  - {id: c1, organizationId: o1, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: tok}\n\
         workspaces:\n  - {id: ws, organizationId: o2, name: w}\ndeployments:\n",
    );
    for d in 0..DEPLOYMENTS {
        yaml.push_str(&format!(
            "  - {{id: cl{d:04}x9k2m0001deploy, workspaceId: ws, clusterId: c1, namespace: elementary-zenith-{}, type: HOSTED, name: d{d}}}\n",
            7243 + d
        ));
    }
    // Three targets per Deployment: two auto-linked Workspace exports with
    // different labels (two variants) and a third sharing the first's labels.
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

fn request(
    series: usize,
) -> (
    Bytes,
    Vec<fanout_proto::scan::Series>,
    fanout_proto::scan::Summary,
) {
    let req = fanout_proto::testdata::realistic_request(series, DEPLOYMENTS);
    let body = Bytes::from(prost::Message::encode_to_vec(&req));
    let mut out = Vec::new();
    let summary =
        fanout_proto::scan::scan_v1(&body, &Default::default(), &mut out).expect("valid request");
    (body, out, summary)
}

#[test]
fn hot_path_allocations_do_not_grow_with_series() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snap = snapshot();
    let cluster = snap.authenticate(None, "tok").expect("cluster");
    let settings = Settings {
        catalog: Catalog::builtin(),
        target_queue_bytes: 4 << 20,
        ..Settings::default()
    };
    let delivery = FanoutDelivery::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        MemoryBudget::new(1 << 30),
        settings,
    );
    rt.block_on(async { delivery.sync_now() });
    let targets = delivery.targets();
    assert_eq!(targets.len(), 3);
    for t in &targets {
        t.set_paused(true);
    }

    let mut per_request = Vec::new();
    for series in [200usize, 2_000] {
        let (body, scanned, summary) = request(series);
        let make = || Accepted {
            cluster: cluster.clone(),
            body: body.clone(),
            series: scanned.clone(),
            summary,
            permit: MemoryPermit::empty(),
        };
        // Warm-up: scratch space, hash maps and queues reach their size.
        for _ in 0..30 {
            rt.block_on(delivery.submit(make())).unwrap();
        }
        let mut counts = Vec::new();
        for _ in 0..10 {
            let batch = make();
            let region = Region::new(GLOBAL);
            rt.block_on(delivery.submit(batch)).unwrap();
            counts.push(region.change().allocations);
        }
        let max = *counts.iter().max().unwrap();
        eprintln!("{series} series: allocations per request {counts:?}");
        per_request.push(max);
    }
    let s = delivery.stats();
    // One metric of eight in the test data (`airflow_dagrun_duration_success_sum`)
    // is no name the statsd mapping produces: the catalog filters it.
    assert_eq!(
        s.filtered.load(std::sync::atomic::Ordering::Relaxed),
        40 * (200 + 2_000) / 8,
    );
    let (small, large) = (per_request[0], per_request[1]);
    assert!(
        large <= small && large <= 8,
        "allocations per request: {small} for 200 series, {large} for 2,000"
    );
    // Everything reached the queues (paused, bounded: drop-oldest keeps them).
    let queued: u64 = delivery
        .target_statuses()
        .iter()
        .map(|t| t.queue_samples)
        .sum();
    assert!(queued > 0);
}
