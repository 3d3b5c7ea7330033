//! Snapshot tests: fixed console states rendered into ratatui's `TestBackend`
//! at 80×24, 120×35 and 160×48, compared by `insta` with the snapshots under
//! `tests/snapshots/` (`NAME_WxH.snap`).
//!
//! Deterministic: every time comes from the fixtures (snapshot `time`,
//! `State::now_ms`). After an intended change of the screens, run the tests
//! and review the new screens with `cargo insta review` (or accept them all
//! with `INSTA_UPDATE=always cargo test -p fanout-tui --test snapshots` and
//! read the diff). Under `CI=true` a missing or different snapshot fails.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fanout_tui::api::{EffectiveList, Registry, Snapshot};
use fanout_tui::state::{State, View};
use fanout_tui::ui::render_text;
use serde_json::{json, Value};

/// 2026-11-25T13:00:00Z in ms.
const T0: i64 = 1_795_611_600_000;
const SIZES: [(u16, u16); 3] = [(80, 24), (120, 35), (160, 48)];

fn time(secs: i64) -> String {
    let s = (13 * 3600 + secs) as u64;
    format!(
        "2026-11-25T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// What routes to each fixture target: a Workspace export shared by two
/// Deployments (twice: one Deployment overrides its endpoint, so it is a
/// target of its own), and exports of one Deployment.
fn feeds(id: &str) -> Value {
    match id {
        "t-3f2a9c01d4e5" => json!([
            {"exportId": "dev-prom", "deploymentId": "dep-etl", "clusterId": "cluster-us"},
            {"exportId": "dev-prom", "deploymentId": "dep-reports", "clusterId": "cluster-eu"}
        ]),
        "t-77b1e0aa9f30" => json!([
            {"exportId": "dev-prom", "deploymentId": "dep-ml", "clusterId": "cluster-us"}
        ]),
        "t-c0ffee123456" => json!([
            {"exportId": "onprem-vm", "deploymentId": "dep-onprem", "clusterId": "cluster-eu"}
        ]),
        _ => json!([
            {"exportId": "prod-prom", "deploymentId": "dep-etl", "clusterId": "cluster-us"}
        ]),
    }
}

/// A counter as the gateway sends it: a whole number.
fn n(x: f64) -> u64 {
    x.round() as u64
}

fn target(id: &str, state: &str, i: i64, rate: f64) -> Value {
    let sent = rate * i as f64;
    let failing = state == "failing" || state == "retrying";
    json!({
        "id": id,
        "endpoint": format!("http://prom-{id}.example:9090/api/v1/write"),
        "protocol": if state == "retrying" { "V1 (fallback: 415 Unsupported Media Type)" } else { "V1" },
        "state": state, "paused": state == "paused",
        "queueBytes": if failing { 1_572_864 + 2048 * i } else { 4096 },
        "queueSamples": if failing { 48_000 } else { 120 },
        "spillBytes": if state == "failing" { 52_428_800 } else { 0 },
        "oldestQueuedSeconds": if failing { 95.0 } else { 0.4 },
        "samplesSent": n(sent), "bytesSent": n(sent * 1.6), "requestsSent": n(sent / 2000.0),
        "retries": if failing { 3 * i } else { 0 },
        "failures": if failing { json!({"503": 3 * i, "timeout": i / 10}) } else { json!({}) },
        "dropped": {"rejected": 0, "queue_full": 0, "disk_full": if state == "failing" { 1200 } else { 0 }},
        "lastError": if failing {
            json!({"time": time(i), "status": 503, "message": "503 Service Unavailable: upstream connect error or disconnect/reset before headers"})
        } else { Value::Null },
        "concurrency": 4, "inFlight": if failing { 4 } else { 1 },
        "latencyMs": if failing { json!({"p50": 30000.0, "p90": 30000.0, "p99": 30000.0, "max": 30000.0}) }
                     else { json!({"p50": 3.1, "p90": 5.0, "p99": 9.7, "max": 14.2}) },
        "feeds": feeds(id)
    })
}

fn snapshot(i: i64) -> Snapshot {
    // Throughput ramps up and down so the charts have a shape.
    let samples = 20_000.0 * i as f64 + 160_000.0 * (1.0 - ((i as f64) / 20.0).cos());
    let doc = json!({
        "time": time(i), "uptimeSeconds": 3600 + i, "gateway": "gw-a:9556", "configVersion": 7,
        "ready": true, "draining": false,
        "ingest": {"requests": {"http1": {"204": 10 * i, "400": i / 30}, "h2": {"204": 5 * i}, "h3": {}},
                   "samples": n(samples), "series": 18_500, "bytes": n(samples * 2.2),
                   "inFlightBytes": 0, "memoryBudgetBytes": 536_870_912},
        "drops": {"unattributed": 120, "foreign": 0, "filtered": 4_200 + 10 * i, "queue_full": 0, "disk_full": 1200, "rejected": 0},
        "out": {"samples": n(samples * 1.8), "bytes": n(samples * 1.8 * 1.6)},
        "targets": [
            target("t-3f2a9c01d4e5", "healthy", i, 20_000.0),
            target("t-77b1e0aa9f30", "failing", i, 0.0),
            target("t-c0ffee123456", "paused", i, 0.0),
            target("t-9e8d7c6b5a41", "retrying", i, 12_000.0),
        ],
        "recentErrors": [
            {"time": time(i), "targetId": "t-77b1e0aa9f30", "status": 503, "message": "503 Service Unavailable: upstream down"},
            {"time": time(i - 1), "targetId": "t-9e8d7c6b5a41", "status": null, "message": "connect: Connection refused (os error 111)"}
        ],
        "deployments": [
            {"id": "dep-etl", "clusterId": "cluster-us", "exports": 2, "state": "failing",
             "samplesDelivered1m": 1_200_000, "samplesDropped1m": {"rejected": 36_000},
             "oldestUndeliveredSeconds": 95.0,
             "lastError": {"time": time(i), "status": 401, "message": "401 Unauthorized: invalid API key"}},
            {"id": "dep-reports", "clusterId": "cluster-eu", "exports": 2, "state": "retrying",
             "samplesDelivered1m": 720_000, "samplesDropped1m": {},
             "oldestUndeliveredSeconds": 12.0,
             "lastError": {"time": time(i - 1), "status": null, "message": "connect: Connection refused (os error 111)"}},
            {"id": "dep-ml", "clusterId": "cluster-us", "exports": 1, "state": "delivering",
             "samplesDelivered1m": 2_400_000, "samplesDropped1m": {}, "oldestUndeliveredSeconds": 0.4},
            {"id": "dep-onprem", "clusterId": "cluster-eu", "exports": 1, "state": "waiting",
             "samplesDelivered1m": 0, "samplesDropped1m": {}, "oldestUndeliveredSeconds": 0.0}
        ]
    });
    serde_json::from_value(doc).expect("fixture")
}

fn registry() -> Registry {
    serde_json::from_value(json!({
        "clusters": [
            {"id": "cluster-us", "organizationId": "org-platform", "cloudProvider": "aws", "cloudRegion": "us-east-1", "ingestToken": "***"},
            {"id": "cluster-eu", "organizationId": "org-platform", "cloudProvider": "gcp", "cloudRegion": "europe-west1", "ingestToken": "***"}
        ],
        "workspaces": [{"id": "ws-data", "organizationId": "org-acme", "name": "Data team"}],
        "deployments": [
            {"id": "dep-etl", "workspaceId": "ws-data", "clusterId": "cluster-us", "namespace": "etl-7x2k", "type": "HOSTED", "name": "etl"},
            {"id": "dep-reports", "workspaceId": "ws-data", "clusterId": "cluster-eu", "namespace": "reports-q9m1", "type": "HOSTED", "name": "reports"},
            {"id": "dep-onprem", "workspaceId": "ws-data", "clusterId": "cluster-eu", "namespace": "onprem-4kd8", "type": "HYBRID", "name": "on-prem"}
        ],
        "metricsExports": [
            {"id": "dev-prom", "objectKey": "dev_prom", "scope": "WORKSPACE", "scopeEntityId": "ws-data",
             "description": "dev Prometheus for every Deployment", "autoLinkDeployments": true,
             "excludeLinks": [{"scope": "DEPLOYMENT", "scopeEntityId": "dep-reports"}],
             "metricsExport": {"endpoint": "http://127.0.0.1:9201/api/v1/write", "exporterType": "PROMETHEUS",
                               "headers": {"X-Scope-OrgID": "team-data"}, "labels": {"env": "dev"}}},
            {"id": "prod-prom", "objectKey": "prod_prom", "scope": "WORKSPACE", "scopeEntityId": "ws-data",
             "description": "production Prometheus", "autoLinkDeployments": false,
             "links": [{"scope": "DEPLOYMENT", "scopeEntityId": "dep-etl",
                        "overrides": {"metricsExport": {"endpoint": "http://127.0.0.1:9203/api/v1/write",
                          "authType": "BASIC", "username": "etl", "password": "hunter2-leaked", "labels": {"env": "prod"}},
                          "setFields": ["password"]}}],
             "metricsExport": {"endpoint": "http://127.0.0.1:9202/api/v1/write", "authType": "AUTH_TOKEN", "basicToken": "***"},
             "setFields": ["basicToken"]},
            {"id": "onprem-vm", "objectKey": "onprem_vm", "scope": "DEPLOYMENT", "scopeEntityId": "dep-onprem",
             "metricsExport": {"endpoint": "http://127.0.0.1:9204/api/v1/write", "exporterType": "PROMETHEUS",
                               "delivery": {"protocol": "V2", "diskBudget": "256MiB"}}}
        ]
    }))
    .expect("fixture")
}

fn effective() -> EffectiveList {
    serde_json::from_value(json!({"items": [
        {"id": "dev-prom", "objectKey": "dev_prom", "sourceScope": "WORKSPACE", "sourceScopeEntityId": "ws-data",
         "targetId": "t-3f2a9c01d4e5",
         "metricsExport": {"endpoint": "http://127.0.0.1:9201/api/v1/write", "exporterType": "PROMETHEUS",
                           "headers": {"x-scope-orgid": "team-data"}, "labels": {"env": "dev"}}, "setFields": [],
         "status": {"state": "delivering", "lastSuccessAt": time(300), "samplesDelivered1m": 1_200_000,
                    "samplesDropped1m": {}, "oldestUndeliveredSeconds": 0.4}},
        {"id": "prod-prom", "objectKey": "prod_prom", "sourceScope": "WORKSPACE", "sourceScopeEntityId": "ws-data",
         "targetId": "t-77b1e0aa9f30",
         "metricsExport": {"endpoint": "http://127.0.0.1:9203/api/v1/write", "authType": "BASIC",
                           "username": "etl", "password": "***", "labels": {"env": "prod"}}, "setFields": ["password"],
         "status": {"state": "failing", "lastSuccessAt": time(60), "samplesDelivered1m": 0,
                    "samplesDropped1m": {"rejected": 36_000}, "oldestUndeliveredSeconds": 95.0,
                    "lastError": {"time": time(300), "status": 401, "message": "401 Unauthorized: invalid API key"}}}
    ]}))
    .expect("fixture")
}

/// Two gateways: gw-a with five minutes of traffic and a failing, a retrying
/// and a paused target; gw-b lost a minute ago.
fn fleet() -> State {
    let mut s = State::new(&["http://127.0.0.1:9556", "http://10.0.0.12:9556"], T0);
    for i in 0..=300 {
        s.now_ms = T0 + i * 1000;
        s.on_stats(0, snapshot(i));
        if i <= 240 {
            let mut b = snapshot(i);
            b.gateway = "gw-b:9556".into();
            b.targets.truncate(1);
            b.recent_errors.clear();
            s.on_stats(1, b);
        }
    }
    s.now_ms = T0 + 240_000;
    s.on_disconnected(
        1,
        "tcp connect error: Connection refused (os error 111)".into(),
        T0 + 242_000,
    );
    s.now_ms = T0 + 300_200;
    s.on_disconnected(
        1,
        "tcp connect error: Connection refused (os error 111)".into(),
        T0 + 308_000,
    );
    s.on_registry(Ok(registry()));
    s.on_effective("dep-etl".into(), Ok(effective().items));
    s.now_ms = T0 + 300_500;
    s
}

/// One gateway, connected, nothing registered, no traffic.
fn empty() -> State {
    let mut s = State::new(&["http://127.0.0.1:9556"], T0);
    for i in 0..3 {
        s.now_ms = T0 + i * 1000;
        let snap: Snapshot = serde_json::from_value(json!({
            "time": time(i), "uptimeSeconds": 2 + i, "gateway": "gw-a:9556", "configVersion": 0,
            "ready": true, "ingest": {"requests": {}, "samples": 0, "bytes": 0},
            "drops": {}, "out": {"samples": 0, "bytes": 0}, "targets": [], "recentErrors": []
        }))
        .expect("fixture");
        s.on_stats(0, snap);
    }
    s.on_registry(Ok(Registry::default()));
    s
}

/// One gateway that never answered.
fn down() -> State {
    let mut s = State::new(&["http://127.0.0.1:9556"], T0);
    s.now_ms = T0 + 100;
    s.on_disconnected(
        0,
        "tcp connect error: Connection refused (os error 111)".into(),
        T0 + 4_100,
    );
    s.now_ms = T0 + 12_000;
    s
}

fn key(s: &mut State, c: KeyCode) {
    s.on_key(KeyEvent::new(c, KeyModifiers::NONE));
}

fn check(name: &str, state: &State) {
    for (w, h) in SIZES {
        let text = render_text(state, w, h);
        assert!(
            !text.contains("hunter2"),
            "{name}: a secret reached the screen:\n{text}"
        );
        assert_eq!(text.lines().count(), h as usize);
        insta::with_settings!({ prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(format!("{name}_{w}x{h}"), text);
        });
    }
}

#[test]
fn overview_with_traffic_and_a_disconnected_gateway() {
    let s = fleet();
    let text = render_text(&s, 80, 24);
    assert!(text.contains("disconnected since 13:04:00"), "{text}");
    assert!(text.contains("1/2 up"), "{text}");
    check("overview_fleet", &s);
}

#[test]
fn targets_table_with_a_failing_target() {
    let mut s = fleet();
    key(&mut s, KeyCode::Char('2'));
    let text = render_text(&s, 80, 24);
    // Worst first: the failing target is the first row.
    let header = text
        .lines()
        .position(|l| l.contains("TARGET"))
        .expect("header");
    let first = text.lines().nth(header + 1).unwrap_or_default();
    assert!(
        text.contains("✖ disconnected: gw-b:9556 since 13:04:00 UTC"),
        "{text}"
    );
    assert!(first.contains("failing"), "{text}");
    check("targets_fleet", &s);
}

#[test]
fn target_detail_shows_history_and_feeds() {
    let mut s = fleet();
    key(&mut s, KeyCode::Char('2'));
    key(&mut s, KeyCode::Enter);
    assert_eq!(s.detail.as_deref(), Some("t-77b1e0aa9f30"));
    let text = render_text(&s, 160, 48);
    assert!(
        text.contains("export dev-prom → Deployment dep-ml"),
        "{text}"
    );
    check("target_detail_fleet", &s);
}

#[test]
fn failures_newest_first_and_filtered() {
    let mut s = fleet();
    key(&mut s, KeyCode::Char('3'));
    check("failures_fleet", &s);
    key(&mut s, KeyCode::Char('/'));
    for c in "refused".chars() {
        key(&mut s, KeyCode::Char(c));
    }
    key(&mut s, KeyCode::Enter);
    let text = render_text(&s, 80, 24);
    assert!(!text.contains("upstream down"), "{text}");
    check("failures_filtered_fleet", &s);
}

#[test]
fn config_tree_and_effective_exports_of_a_deployment() {
    let mut s = fleet();
    key(&mut s, KeyCode::Char('4'));
    // Rows: Workspace, dev-prom, exclude, prod-prom, link, dep-etl.
    let rows = s.config_rows();
    let etl = rows
        .iter()
        .position(|r| r.text.starts_with("Deployment dep-etl"))
        .expect("dep-etl row");
    for _ in 0..etl {
        key(&mut s, KeyCode::Down);
    }
    // Already loaded in the fixture: moving there asks for nothing new.
    assert_eq!(s.view, View::Config);
    check("config_fleet", &s);
    let text = render_text(&s, 160, 48);
    assert!(text.contains("password = ***"), "{text}");
}

#[test]
fn deployments_sorted_filtered_and_their_exports() {
    let mut s = fleet();
    key(&mut s, KeyCode::Char('5'));
    assert_eq!(s.view, View::Deployments);
    // Worst first: dep-etl (failing), whose exports the fixture has read.
    let rows = s.deployments();
    assert_eq!(rows[0].id, "dep-etl");
    // Only gw-a is connected: its last minute, per second.
    assert_eq!(rows[0].rate, 20_000.0);
    let text = render_text(&s, 120, 35);
    assert!(text.contains("Exports of dep-etl"), "{text}");
    assert!(text.contains("401 Unauthorized: invalid API key"), "{text}");
    check("deployments_fleet", &s);
    // By rate: dep-ml first.
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(s.deployments()[0].id, "dep-ml");
    // Filtered to one cluster; Esc closes the exports panel.
    key(&mut s, KeyCode::Char('/'));
    for c in "cluster-eu".chars() {
        key(&mut s, KeyCode::Char(c));
    }
    key(&mut s, KeyCode::Enter);
    let ids: Vec<String> = s.deployments().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["dep-reports", "dep-onprem"]);
    check("deployments_filtered_fleet", &s);
    // Enter reads the selected Deployment's exports from a connected gateway.
    key(&mut s, KeyCode::Enter);
    assert_eq!(
        s.effective.as_ref().map(|e| e.deployment.as_str()),
        Some("dep-reports")
    );
}

#[test]
fn help_overlay() {
    let mut s = fleet();
    key(&mut s, KeyCode::Char('?'));
    check("help_fleet", &s);
}

#[test]
fn empty_registry_in_every_view() {
    let mut s = empty();
    check("overview_empty", &s);
    key(&mut s, KeyCode::Char('2'));
    check("targets_empty", &s);
    key(&mut s, KeyCode::Char('3'));
    check("failures_empty", &s);
    key(&mut s, KeyCode::Char('4'));
    let text = render_text(&s, 80, 24);
    assert!(text.contains("The registry is empty"), "{text}");
    check("config_empty", &s);
    key(&mut s, KeyCode::Char('5'));
    check("deployments_empty", &s);
}

#[test]
fn gateway_that_never_answered() {
    let mut s = down();
    let text = render_text(&s, 80, 24);
    assert!(text.contains("disconnected since 13:00:00"), "{text}");
    check("overview_down", &s);
    key(&mut s, KeyCode::Char('2'));
    check("targets_down", &s);
    key(&mut s, KeyCode::Char('4'));
    check("config_down", &s);
}

#[test]
fn readme_captures_are_the_80x24_snapshots() {
    // The README shows the console with the 80×24 snapshots: each capture
    // must be one of them, so a changed screen cannot leave the README stale.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let mut snaps = Vec::new();
    for entry in std::fs::read_dir(root.join("tests/snapshots")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with("_80x24.snap") {
            let text = std::fs::read_to_string(&path).unwrap();
            let body = text.splitn(3, "---\n").nth(2).unwrap_or_default();
            snaps.push(body.trim_end_matches('\n').to_owned());
        }
    }
    let mut captures = 0;
    for block in readme.split("```text\n").skip(1) {
        let capture = block.split("```").next().unwrap_or_default();
        let capture = capture.trim_end_matches('\n');
        if capture
            .lines()
            .next()
            .is_some_and(|l| l.contains("1 Overview  2 Targets"))
        {
            captures += 1;
            assert!(
                snaps.iter().any(|s| s == capture),
                "a README capture is no 80x24 snapshot any more:\n{capture}"
            );
        }
    }
    assert!(
        captures >= 4,
        "only {captures} captures found in the README"
    );
}

#[test]
fn a_gateway_whose_store_is_unreachable_says_so() {
    let mut s = State::new(&["http://127.0.0.1:9556"], T0);
    let mut snap = snapshot(1);
    s.on_stats(0, snap.clone());
    let text = render_text(&s, 120, 24);
    assert!(!text.contains("store: unreachable"), "{text}");
    snap.store_reachable = Some(false);
    s.now_ms = T0 + 1000;
    s.on_stats(0, snap);
    let text = render_text(&s, 120, 24);
    assert!(text.contains("ready  store: unreachable"), "{text}");
}

/// One gateway with 10,000 Deployments, each with a target of its own.
fn ten_thousand() -> State {
    let mut s = State::new(&["http://127.0.0.1:9556"], T0);
    let deployments: Vec<Value> = (0..10_000)
        .map(|d| {
            json!({"id": format!("dep-{d:05}"), "clusterId": format!("cl-{:03}", d / 100), "exports": 2,
                   "state": "delivering", "samplesDelivered1m": 600 * (d % 7), "samplesDropped1m": {},
                   "oldestUndeliveredSeconds": 0.2})
        })
        .collect();
    for i in 0..2 {
        let targets: Vec<Value> = (0..10_000)
            .map(|d| {
                let mut t = target(&format!("t-{d:012x}"), "healthy", i, 5.0);
                t["endpoint"] = json!(format!("https://tenant-{d:05}.example.com/api/v1/write"));
                t["feeds"] = json!([{"exportId": format!("own-{d:05}"), "deploymentId": format!("dep-{d:05}"), "clusterId": "cl-000"}]);
                t
            })
            .collect();
        s.now_ms = T0 + i * 1000;
        let snap: Snapshot = serde_json::from_value(json!({
            "time": time(i), "uptimeSeconds": 60 + i, "gateway": "gw-a:9556", "configVersion": 3,
            "ready": true, "ingest": {"requests": {}, "samples": 0, "bytes": 0},
            "drops": {}, "out": {"samples": 0, "bytes": 0}, "targets": targets, "recentErrors": [],
            "deployments": deployments
        }))
        .expect("fixture");
        s.on_stats(0, snap);
    }
    s
}

#[test]
fn ten_thousand_deployments_page_scroll_and_filter() {
    let mut s = ten_thousand();
    key(&mut s, KeyCode::Char('5'));
    // All delivering: by id within the state.
    assert_eq!(s.deployments().len(), 10_000);
    assert_eq!(s.deployments()[0].id, "dep-00000");
    // Two pages down, then the end: the selection is on the last line.
    key(&mut s, KeyCode::PageDown);
    key(&mut s, KeyCode::PageDown);
    check("deployments_10000_paged", &s);
    key(&mut s, KeyCode::End);
    let text = render_text(&s, 80, 24);
    assert!(text.contains("Deployments (10000)"), "{text}");
    check("deployments_10000_end", &s);
    // A filter narrows 10,000 rows to the ten that match.
    key(&mut s, KeyCode::Char('/'));
    for c in "dep-0999".chars() {
        key(&mut s, KeyCode::Char(c));
    }
    key(&mut s, KeyCode::Enter);
    assert_eq!(s.deployments().len(), 10);
    check("deployments_10000_filtered", &s);
    // The Targets view pages the same way.
    key(&mut s, KeyCode::Char('2'));
    key(&mut s, KeyCode::PageDown);
    check("targets_10000_paged", &s);
}
