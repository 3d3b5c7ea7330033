//! Remote-write 2.0 egress (issue 13) with the real `fanout serve` and
//! verifying sinks on 127.0.0.1:
//!
//! - `a_v2_target_gets_v1_and_v2_input_as_v2`: a `protocol: V2` target
//!   gets every sample of 1.0 and 2.0 input, in order per series, with the
//!   stamped labels, in 2.0 requests only (the sink decodes 2.0 and answers
//!   with the Written headers); `/api/v1/targets` says `V2`.
//! - `v1_only_receivers_get_everything_through_the_fallback`: two
//!   `protocol: V2` targets whose receivers speak only 1.0, one refusing 2.0
//!   with 415, one reading it as 1.0 and answering 204 without the Written
//!   headers (as Prometheus 2.x does). Both get every sample exactly once,
//!   in order, as 1.0 after the first 2.0 attempt; `/api/v1/targets` shows
//!   `V1 (fallback: <reason>)` for each.

use std::net::SocketAddr;
use std::time::Duration;

use fanout_loadtest::sink::{Sink, SinkConfig, SinkHandle, V1Only};
use fanout_tests::fanout::{free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, await_all, client, in_order, round, targets};

const TOKEN: &str = "egress-v2-ingest-token";

/// Cluster `cl-a`, Deployment `d1`, and one `protocol: V2` export of d1 per
/// `(id, port)`.
fn registry(exports: &[(&str, u16)]) -> String {
    let mut yaml = rounds::registry(TOKEN, "");
    yaml.push_str("metricsExports:\n");
    for (id, port) in exports {
        yaml.push_str(&format!(
            "  - {{id: {id}, objectKey: {id}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{protocol: V2, batchSendDeadline: 50ms, maxSamplesPerSend: 500, maxBackoff: 200ms}}}}}}\n",
            rounds::endpoint(*port)
        ));
    }
    yaml
}

async fn sink(name: &str, port: u16, v1_only: V1Only) -> SinkHandle {
    Sink::start(SinkConfig {
        name: name.to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        v1_only,
        ..SinkConfig::default()
    })
    .await
    .expect("sink starts")
}

fn start(name: &str, exports: &[(&str, u16)]) -> (Gateway, TempDir) {
    let dir = TempDir::new(&format!("{name}-conf"));
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(exports)).unwrap();
    let gw = Gateway::start(name, &["--registry", path.to_str().unwrap()]);
    (gw, dir)
}

/// The `protocol` of the target whose endpoint has `port`.
fn protocol_of(gw: &Gateway, port: u16) -> String {
    targets(gw)
        .iter()
        .find(|t| {
            t["endpoint"]
                .as_str()
                .is_some_and(|e| e.contains(&format!(":{port}/")))
        })
        .and_then(|t| t["protocol"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_target_gets_v1_and_v2_input_as_v2() {
    let port = free_port();
    let sink = sink("t", port, V1Only::No).await;
    let (gw, _conf) = start("egress-v2", &[("s", port)]);
    let http = client();
    let sent: Vec<u32> = (0..40).collect();
    for &seq in &sent {
        // Every other round as 2.0 input.
        let status = match seq % 2 {
            0 => rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            _ => rounds::write_v2(&http, &gw.ingest, TOKEN, round(0, seq)).await,
        };
        assert_eq!(status, 204, "round {seq}");
    }
    await_all(&in_order("t", &sent), &sink, &gw, Duration::from_secs(30)).await;
    let report = sink.report();
    assert_eq!(
        report.protocols.keys().collect::<Vec<_>>(),
        ["v2"],
        "2.0 requests only: {:?}",
        report.protocols
    );
    // The stamped labels arrive with every series.
    for (id, rec) in &report.series {
        assert!(
            rec.label_sets
                .iter()
                .all(|l| l.iter().any(|(k, v)| k == "deploymentId" && v == "d1")),
            "series {id:?}: {:?}",
            rec.label_sets
        );
    }
    assert_eq!(protocol_of(&gw, port), "V2");
    eprintln!(
        "V2 target: {} samples in {} requests, all 2.0",
        report.samples, report.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_only_receivers_get_everything_through_the_fallback() {
    let (p415, pmis) = (free_port(), free_port());
    let refusing = sink("r", p415, V1Only::Refuse).await;
    let misreading = sink("m", pmis, V1Only::Misread).await;
    let (gw, _conf) = start("egress-v2-fallback", &[("r", p415), ("m", pmis)]);
    let http = client();
    let sent: Vec<u32> = (0..30).collect();
    for &seq in &sent {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    // Exactly once each, in order: a duplicate or a gap is a problem.
    await_all(
        &in_order("r", &sent),
        &refusing,
        &gw,
        Duration::from_secs(30),
    )
    .await;
    await_all(
        &in_order("m", &sent),
        &misreading,
        &gw,
        Duration::from_secs(30),
    )
    .await;
    for (s, what) in [(&refusing, "415"), (&misreading, "204 without")] {
        let r = s.report();
        assert!(
            r.v2_refused >= 1,
            "{what}: the first attempt was 2.0: {r:?}"
        );
        assert!(
            r.protocols.get("v1").copied().unwrap_or(0) >= 1,
            "{what}: {:?}",
            r.protocols
        );
    }
    let refused = protocol_of(&gw, p415);
    assert!(refused.starts_with("V1 (fallback: 415"), "{refused}");
    let misread = protocol_of(&gw, pmis);
    assert_eq!(
        misread,
        "V1 (fallback: 204 without X-Prometheus-Remote-Write-Samples-Written)"
    );
    let log = gw.log();
    assert!(log.contains("falling back to 1.0"), "{log}");
    eprintln!("fallbacks: {refused} | {misread}");
}
