//! Interop: `fanout serve` delivers to real receivers — Prometheus 2.42
//! (`--web.enable-remote-write-receiver`) and victoria-metrics (Debian's
//! `victoria-metrics` package) — and the series are found through their query
//! APIs with the metadata and target labels fanout stamped. The Prometheus
//! export is configured `protocol: V2`: Prometheus 2.42 does not speak 2.0,
//! and every sample reaches it through the fallback to 1.0. Metadata sent to
//! the gateway is forwarded to both (once a second here) while they store
//! every sample.
//!
//! Needs both binaries (`FANOUT_PROMETHEUS_BIN`, `FANOUT_VICTORIA_METRICS_BIN`,
//! or on `PATH`); `.ci/run` installs them. A missing peer fails under `CI`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fanout_proto::v1;
use fanout_tests::fanout::Gateway;
use fanout_tests::prometheus::{
    free_port, http, peer_binary, prometheus_binary, prometheus_server, temp_dir, wait_for, Proc,
};

const TOKEN: &str = "interop-receivers-token-51c2";

fn victoria_metrics_binary() -> Option<PathBuf> {
    peer_binary("FANOUT_VICTORIA_METRICS_BIN", "victoria-metrics")
}

fn write_request(seq: u32) -> Vec<u8> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let series = |name: &str, extra: &[(&str, &str)]| {
        let mut labels: Vec<v1::Label> = [
            ("__name__", name),
            ("namespace", "interop-ns"),
            ("pod", "interop-pod-1"),
            ("workspaceId", "spoofed"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| v1::Label {
            name: k.to_string(),
            value: v.to_string(),
        })
        .collect();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        v1::TimeSeries {
            labels,
            samples: vec![v1::Sample {
                value: f64::from(seq),
                timestamp: ts,
            }],
            ..Default::default()
        }
    };
    let req = v1::WriteRequest {
        timeseries: vec![
            series("airflow_ti_failures_total", &[]),
            series("airflow_pool_open_slots", &[("pool", "default_pool")]),
            series("go_goroutines", &[]),
        ],
        ..Default::default()
    };
    fanout_proto::snappy::compress(&prost::Message::encode_to_vec(&req))
}

fn has_labels(body: &str) -> bool {
    [
        r#""deploymentId":"dep-int""#,
        r#""workspaceId":"ws-int""#,
        r#""organizationId":"org-ws""#,
        r#""cluster_organization_id":"org-cl""#,
        r#""cloud_provider":"aws""#,
        r#""cloud_region":"us-east-1""#,
        r#""namespace":"interop-ns""#,
        r#""pod":"interop-pod-1""#,
        r#""env":"interop""#,
    ]
    .iter()
    .all(|l| body.contains(l))
}

#[test]
#[ignore = "needs prometheus and victoria-metrics; run by .ci/run"]
fn delivers_to_prometheus_and_victoria_metrics_with_metadata_labels() {
    // Ignored unless asked for; asked for, a missing peer is a failure.
    let (Some(prometheus), Some(vm)) = (prometheus_binary(), victoria_metrics_binary()) else {
        panic!(
            "prometheus or victoria-metrics binary not found (FANOUT_PROMETHEUS_BIN, FANOUT_VICTORIA_METRICS_BIN)"
        );
    };
    let dir = temp_dir("interop-receivers");
    let prom_port = free_port();
    let vm_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1m\n",
    )
    .unwrap();
    let _prom = prometheus_server(
        &prometheus,
        &dir.join("prometheus.yml"),
        prom_port,
        &dir.join("prom-data"),
        true,
        &dir.join("prometheus.log"),
    );
    let _vm = Proc::spawn(
        "victoria-metrics",
        Command::new(&vm)
            .arg(format!(
                "-storageDataPath={}",
                dir.join("vm-data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
            .arg("-retentionPeriod=100y")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vm.log")).unwrap()),
    );
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let vm_addr: SocketAddr = format!("127.0.0.1:{vm_port}").parse().unwrap();
    for (name, addr, path) in [
        ("prometheus", prom_addr, "/-/ready"),
        ("victoria-metrics", vm_addr, "/health"),
    ] {
        wait_for(Duration::from_secs(60), || {
            http(addr, "GET", path, &[], b"").filter(|(s, _)| *s == 200)
        })
        .unwrap_or_else(|| panic!("{name} not ready within 60s"));
    }

    let registry = format!(
        "clusters:\n  - {{id: cl-int, organizationId: org-cl, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: {TOKEN}}}\n\
         workspaces:\n  - {{id: ws-int, organizationId: org-ws, name: interop}}\n\
         deployments:\n  - {{id: dep-int, workspaceId: ws-int, clusterId: cl-int, namespace: interop-ns, type: HOSTED, name: interop}}\n\
         metricsExports:\n\
         \x20 - {{id: to-prom, objectKey: to_prom, scope: WORKSPACE, scopeEntityId: ws-int, autoLinkDeployments: true, metricsExport: {{endpoint: 'http://{prom_addr}/api/v1/write', labels: {{env: interop}}, delivery: {{batchSendDeadline: 200ms, protocol: V2}}}}}}\n\
         \x20 - {{id: to-vm, objectKey: to_vm, scope: DEPLOYMENT, scopeEntityId: dep-int, metricsExport: {{endpoint: 'http://{vm_addr}/api/v1/write', labels: {{env: interop}}, delivery: {{batchSendDeadline: 200ms}}}}}}\n"
    );
    let reg_path = dir.join("registry.yaml");
    std::fs::write(&reg_path, registry).unwrap();
    let gw = Gateway::start(
        "interop-receivers",
        &[
            "--registry",
            reg_path.to_str().unwrap(),
            "--metadata-send-interval",
            "1s",
        ],
    );
    let ingest: SocketAddr = gw.ingest.parse().unwrap();
    let auth = format!("Bearer {TOKEN}");
    // Metadata, as Prometheus sends it (a request of its own): forwarded to
    // victoria-metrics (a 1.0 target) every second from now on.
    let metadata = v1::WriteRequest {
        timeseries: vec![],
        metadata: vec![v1::MetricMetadata {
            r#type: 1,
            metric_family_name: "airflow_ti_failures_total".into(),
            help: "Task instance failures.".into(),
            unit: String::new(),
        }],
    };
    let write = |body: &[u8]| {
        let (status, text) = http(
            ingest,
            "POST",
            "/api/v1/write",
            &[
                ("Content-Encoding", "snappy"),
                ("Content-Type", "application/x-protobuf"),
                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                ("Authorization", &auth),
            ],
            body,
        )
        .expect("ingest reachable");
        assert_eq!(status, 204, "{text}");
    };
    write(&fanout_proto::snappy::compress(
        &prost::Message::encode_to_vec(&metadata),
    ));
    for seq in 0..5 {
        write(&write_request(seq));
        std::thread::sleep(Duration::from_millis(300));
    }

    // Prometheus: an instant query finds both exported series, stamped.
    let found = wait_for(Duration::from_secs(30), || {
        let (s, body) = http(
            prom_addr,
            "GET",
            "/api/v1/query?query=airflow_ti_failures_total",
            &[],
            b"",
        )?;
        (s == 200 && has_labels(&body)).then_some(body)
    });
    assert!(
        found.is_some(),
        "Prometheus never showed the stamped series; fanout log:\n{}",
        gw.log()
    );
    // Every sample, although it was configured as a 2.0 target: Prometheus
    // 2.42 reads a 2.0 body as 1.0, stores nothing and answers 204 without
    // the Written headers, and Fanout falls back to 1.0 for it.
    let all = wait_for(Duration::from_secs(30), || {
        let (s, body) = http(
            prom_addr,
            "GET",
            "/api/v1/query?query=count_over_time(airflow_ti_failures_total%5B10m%5D)",
            &[],
            b"",
        )?;
        (s == 200 && body.contains(r#","5"]"#)).then_some(body)
    });
    assert!(
        all.is_some(),
        "Prometheus does not hold the 5 samples; fanout log:\n{}",
        gw.log()
    );
    let (_, targets) = gw.request("GET", "/api/v1/targets", None);
    assert!(
        targets.contains(
            r#""protocol":"V1 (fallback: 204 without X-Prometheus-Remote-Write-Samples-Written)""#
        ),
        "{targets}"
    );
    let (_, pools) = http(
        prom_addr,
        "GET",
        "/api/v1/query?query=airflow_pool_open_slots",
        &[],
        b"",
    )
    .unwrap();
    assert!(
        has_labels(&pools) && pools.contains(r#""pool":"default_pool""#),
        "{pools}"
    );
    assert!(!pools.contains("spoofed"), "{pools}");
    let (_, filtered) = http(
        prom_addr,
        "GET",
        "/api/v1/query?query=go_goroutines",
        &[],
        b"",
    )
    .unwrap();
    assert!(
        filtered.contains(r#""result":[]"#),
        "catalog filter: {filtered}"
    );

    // victoria-metrics: export the raw series after a flush.
    let found = wait_for(Duration::from_secs(30), || {
        let _ = http(vm_addr, "GET", "/internal/force_flush", &[], b"");
        let (s, body) = http(
            vm_addr,
            "GET",
            "/api/v1/export?match%5B%5D=airflow_ti_failures_total",
            &[],
            b"",
        )?;
        (s == 200 && has_labels(&body) && body.contains("\"values\":[0,1,2,3,4]")).then_some(body)
    });
    let body = found.unwrap_or_else(|| {
        panic!(
            "victoria-metrics never showed the stamped series; fanout log:\n{}",
            gw.log()
        )
    });
    assert!(
        body.contains("\"values\":[0,1,2,3,4]"),
        "every sample once, in order: {body}"
    );
    // Metadata went to victoria-metrics (and to Prometheus, through the
    // fallback to 1.0) beside the samples, and was taken.
    let log = gw.log();
    assert!(
        !log.contains("metadata not delivered"),
        "a receiver refused the metadata:\n{log}"
    );

    // The gateway counts a batch once the receiver answered.
    let stats = wait_for(Duration::from_secs(10), || {
        let (_, stats) = gw.request("GET", "/api/v1/stats", None);
        let stats: serde_json::Value = serde_json::from_str(&stats).ok()?;
        let sent = stats["targets"]
            .as_array()?
            .iter()
            .all(|t| t["samplesSent"] == 10);
        sent.then_some(stats)
    })
    .unwrap_or_else(|| panic!("{}", gw.request("GET", "/api/v1/stats", None).1));
    assert_eq!(stats["drops"]["filtered"], 5, "{stats}");
    for t in stats["targets"].as_array().unwrap() {
        assert_eq!(t["samplesSent"], 10, "{t}");
        assert_eq!(t["failures"], serde_json::json!({}), "{t}");
    }
}
