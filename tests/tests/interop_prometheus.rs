//! Interop: a real Prometheus 2.42 server scrapes itself and remote-writes,
//! with a bearer token, to the real `fanout serve`; fanout accepts the series
//! and attributes them to the cluster of that token.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by
//! `.ci/run`). Without it the test prints a notice and passes, unless `CI` is
//! set, where a missing peer is a failure.

use std::process::{Command, Stdio};
use std::time::Duration;

use fanout_tests::prometheus::{
    fanout_binary, free_port, http_get_status, prometheus_binary, prometheus_server, temp_dir,
    wait_for, Proc,
};

const TOKEN: &str = "interop-ingest-token-7f3a";

#[test]
#[ignore = "needs the prometheus binary; run by .ci/run with --ignored"]
fn prometheus_remote_write_is_accepted_by_fanout() {
    // Ignored unless asked for; asked for, a missing peer is a failure.
    let prometheus = prometheus_binary().expect(
        "prometheus binary not found (install Debian's `prometheus` or set FANOUT_PROMETHEUS_BIN)",
    );
    let fanout = fanout_binary();
    let dir = temp_dir("interop-prom");
    let ingest_port = free_port();
    let admin_port = free_port();
    let web_port = free_port();

    let registry = dir.join("registry.yaml");
    std::fs::write(
        &registry,
        format!(
            "clusters:\n  - id: cluster-int\n    organizationId: org-int\n    cloudProvider: aws\n    cloudRegion: us-east-1\n    ingestToken: {TOKEN}\n"
        ),
    )
    .unwrap();
    let fanout_log = dir.join("fanout.log");
    let mut gateway = Proc::spawn(
        "fanout serve",
        Command::new(&fanout)
            .arg("serve")
            .args(["--ingest-listen", &format!("127.0.0.1:{ingest_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--registry")
            .arg(&registry)
            .env("FANOUT_LOG", "info,fanout_gateway::deliver=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&fanout_log).unwrap()),
    );
    let ingest = format!("127.0.0.1:{ingest_port}").parse().unwrap();
    let log = || strip_ansi(&std::fs::read_to_string(&fanout_log).unwrap_or_default());
    let ready = wait_for(Duration::from_secs(60), || {
        (http_get_status(ingest, "/readyz") == Some(200)).then_some(())
    });
    assert!(ready.is_some(), "fanout never became ready:\n{}", log());

    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: self
    static_configs:
      - targets: ["127.0.0.1:{web_port}"]
remote_write:
  - url: http://127.0.0.1:{ingest_port}/api/v1/write
    authorization:
      credentials: {TOKEN}
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 500
"#
        ),
    )
    .unwrap();
    let prom_log = dir.join("prometheus.log");
    let _prom = prometheus_server(
        &prometheus,
        &prom_config,
        web_port,
        &dir.join("tsdb"),
        false,
        &prom_log,
    );

    // Fanout logs every accepted batch with running totals per cluster.
    let accepted = wait_for(Duration::from_secs(90), || {
        log().lines().rev().find_map(|line| {
            if !line.contains("accepted batch") || !line.contains("cluster=cluster-int") {
                return None;
            }
            let total = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("total_samples="))?
                .parse::<u64>()
                .ok()?;
            (total >= 100).then_some(total)
        })
    });
    let prom_text = std::fs::read_to_string(&prom_log).unwrap_or_default();
    assert!(
        accepted.is_some(),
        "fanout did not accept Prometheus' samples.\nfanout log:\n{}\nprometheus log:\n{prom_text}",
        log()
    );
    assert!(
        !prom_text.contains("non-recoverable error"),
        "prometheus saw errors:\n{prom_text}"
    );

    let status = gateway.terminate(Duration::from_secs(40));
    let text = log();
    assert!(
        status.is_some_and(|s| s.success()),
        "fanout did not exit 0 on SIGTERM ({status:?}):\n{text}"
    );
    assert!(text.contains("ingest stopped"), "{text}");
    assert!(
        !text.contains(TOKEN),
        "the ingest token leaked into the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
