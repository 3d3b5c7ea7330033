//! A target's disk backlog follows a config change of its export (issue 6,
//! docs/spill.md "Config changes"): the real `fanout` binary and
//! fanout-load's verifying sink in this process, on 127.0.0.1.
//!
//! - `config_change_while_down_resumes_the_backlog`: the target is down and
//!   a backlog builds up on disk; the gateway stops (SIGTERM); it restarts
//!   with the export's endpoint (now where the sink listens), a header and
//!   `maxConcurrency` changed, so the target has a new id. Every
//!   acknowledged sample arrives, in order per series, before and with the
//!   traffic taken after the restart, and no orphan backlog is left.
//! - `live_config_change_goes_on_in_place`: the same change made through the
//!   admin API (PATCH of the export) while the target is down with a disk
//!   backlog: the running target becomes the new one in place (no old
//!   target draining in parallel: a sink on the old endpoint receives
//!   nothing), every acknowledged sample arrives at the new endpoint with
//!   the new header, in order per series.
//! - `restart_while_replaying_loses_nothing`: the same without the config
//!   change. At the SIGTERM some disk records are read back into batches
//!   that keep failing; they must stay unacked on disk (they were acked and
//!   lost before `TargetCore::drain_memory` froze the disk ack).

use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_loadtest::sink::SinkHandle;
use fanout_loadtest::verify::Expectation;
use fanout_tests::fanout::{free_port, Gateway};
use fanout_tests::rounds::{
    self, await_all, client, in_order, orphans, round, target, HttpClient, SERIES,
};

const TOKEN: &str = "cfg-change-ingest-token";

/// The registry with export `s` of Deployment d1 sending to `port`, with
/// `max_concurrency` and header `X-Config: {tag}`.
fn registry(port: u16, max_concurrency: u32, tag: &str) -> String {
    rounds::registry(
        TOKEN,
        &format!(
            "endpoint: '{}', headers: {{X-Config: {tag}}}, delivery: {{batchSendDeadline: 50ms, maxSamplesPerSend: 500, maxConcurrency: {max_concurrency}, maxBackoff: 200ms}}",
            rounds::endpoint(port)
        ),
    )
}

/// Round `seq` of cluster 0.
fn body(seq: u32) -> Bytes {
    round(0, seq)
}

async fn write(client: &HttpClient, ingest: &str, body: Bytes) -> u16 {
    rounds::write(client, ingest, TOKEN, body).await
}

/// A sink named `name` on `port` that refuses requests (400) without the
/// header `X-Config: {tag}`.
async fn sink_at(port: u16, name: &str, tag: &str) -> SinkHandle {
    rounds::sink_at(port, name, &[("X-Config", tag)]).await
}

/// Every series in the `acked` rounds, once each, in order.
fn expectation(acked: &[u32]) -> Expectation {
    in_order("t", acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_change_while_down_resumes_the_backlog() {
    run(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_while_replaying_loses_nothing() {
    run(false).await
}

/// Down target, backlog on disk (partly read back into batches that keep
/// failing), SIGTERM, restart with the sink up; with `change` the export's
/// endpoint, a header and maxConcurrency changed meanwhile.
async fn run(change: bool) {
    let down_port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("cfg-change-restart");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(down_port, 4, "old")).unwrap();
    let args = [
        "--registry",
        path.to_str().unwrap(),
        "--target-queue-memory",
        "64KiB",
        "--shutdown-grace",
        "1s",
    ];
    let mut gw = Gateway::start("cfg-change-restart", &args);
    let http = client();
    let mut acked = Vec::new();
    for seq in 0..40u32 {
        if write(&http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
    }
    assert_eq!(acked.len(), 40, "every write acknowledged");
    let before = target(&gw);
    assert!(
        before["spillBytes"].as_u64().unwrap_or(0) > 0,
        "backlog on disk: {before}"
    );
    let status = tokio::task::block_in_place(|| gw.terminate(Duration::from_secs(15)))
        .unwrap_or_else(|| panic!("no exit; log:\n{}", gw.log()));
    assert!(status.success(), "exit {status:?}; log:\n{}", gw.log());
    let data = gw.take_data_dir();
    drop(gw);

    // The user fixed the endpoint, changed a header and maxConcurrency
    // while the gateway was down.
    let port = if change { free_port() } else { down_port };
    let sink = sink_at(port, "t", if change { "new" } else { "old" }).await;
    if change {
        std::fs::write(&path, registry(port, 2, "new")).unwrap();
    }
    let gw = Gateway::start_in("cfg-change-restart", data, &args);
    let after = target(&gw);
    if change {
        assert_ne!(before["id"], after["id"], "a config change gives a new id");
    } else {
        assert_eq!(before["id"], after["id"]);
    }
    for seq in 40..60u32 {
        if write(&http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
    }
    assert_eq!(acked.len(), 60);
    await_all(&expectation(&acked), &sink, &gw, Duration::from_secs(20)).await;
    assert_eq!(
        orphans(&gw),
        Vec::<serde_json::Value>::new(),
        "no orphan backlog"
    );
    let log = gw.log();
    assert_eq!(
        log.contains("resuming the disk backlog of its previous target"),
        change,
        "adoption logged iff the config changed:\n{log}"
    );
    let t = target(&gw);
    assert_eq!(t["dropped"]["queue_full"], 0, "{t}");
    assert_eq!(t["dropped"]["disk_full"], 0, "{t}");
    eprintln!(
        "restart (config changed: {change}): {} acknowledged requests of {SERIES} series delivered in order via target {}",
        acked.len(),
        t["id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_config_change_goes_on_in_place() {
    let old_port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("cfg-change-live");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(old_port, 4, "old")).unwrap();
    let args = [
        "--registry",
        path.to_str().unwrap(),
        "--target-queue-memory",
        "64KiB",
    ];
    let gw = Gateway::start("cfg-change-live", &args);
    let http = client();
    let mut acked = Vec::new();
    for seq in 0..40u32 {
        if write(&http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
    }
    assert_eq!(acked.len(), 40, "every write acknowledged");
    let before = target(&gw);
    assert!(
        before["spillBytes"].as_u64().unwrap_or(0) > 0,
        "backlog on disk: {before}"
    );
    // Endpoint, header and maxConcurrency change while the target is down.
    let port = free_port();
    let patch = format!(
        r#"{{"metricsExport": {{"endpoint": "http://127.0.0.1:{port}/api/v1/write", "headers": {{"X-Config": "new"}}, "delivery": {{"maxConcurrency": 2}}}}}}"#
    );
    let (status, text) = gw.request(
        "PATCH",
        "/api/v1/metrics-exports/s",
        Some(("application/json", &patch)),
    );
    assert_eq!(status, 200, "{text}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let t = target(&gw);
        if t["id"] != before["id"] {
            break t;
        }
        assert!(Instant::now() < deadline, "no new target: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        after["endpoint"]
            .as_str()
            .unwrap_or("")
            .contains(&port.to_string()),
        "{after}"
    );
    assert!(
        after["spillBytes"].as_u64().unwrap_or(0) > 0,
        "backlog kept: {after}"
    );
    // Both endpoints up: whatever reaches the old one came from an old
    // target draining in parallel.
    let old = sink_at(old_port, "old", "old").await;
    let sink = sink_at(port, "t", "new").await;
    for seq in 40..60u32 {
        if write(&http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
    }
    assert_eq!(acked.len(), 60);
    await_all(&expectation(&acked), &sink, &gw, Duration::from_secs(20)).await;
    // target() asserts a single target: nothing retired draining.
    let t = target(&gw);
    assert_eq!(t["id"], after["id"]);
    assert_eq!(t["dropped"]["rejected"], 0, "{t}");
    assert_eq!(t["dropped"]["queue_full"], 0, "{t}");
    assert_eq!(t["dropped"]["disk_full"], 0, "{t}");
    let r = old.report();
    assert_eq!(
        (r.requests, r.samples),
        (0, 0),
        "the old endpoint got data after the change"
    );
    assert_eq!(
        orphans(&gw),
        Vec::<serde_json::Value>::new(),
        "no orphan backlog"
    );
    let log = gw.log();
    assert!(
        log.contains("its target goes on under the new id"),
        "in-place change logged:\n{log}"
    );
    assert!(!log.contains("target removed; draining"), "{log}");
    eprintln!(
        "live config change: {} acknowledged requests of {SERIES} series delivered in order via {} (was {}), none to the old endpoint",
        acked.len(),
        t["id"],
        before["id"]
    );
}
