//! The README's quickstart, step by step, with real Prometheus 2.42 servers:
//! the gateway on `examples/registry.yaml` with `--catalog all`, a
//! Prometheus receiving remote-write as export dev-prom's target, a cluster's
//! Prometheus on `examples/prometheus.yml`; the target's query API must show
//! the cluster's `up` series with the labels Fanout stamped.
//!
//! The files are used as they are, except that every port is replaced by a
//! free one (tests run side by side); the test first checks that the README
//! still gives exactly these commands, so the two cannot drift apart.
//! Needs the `prometheus` binary (`.ci/run` installs it).

use std::net::SocketAddr;
use std::time::Duration;

use fanout_tests::fanout::Gateway;
use fanout_tests::prometheus::{
    free_port, http, prometheus_binary, prometheus_server, temp_dir, wait_for,
};

/// The repository root (this crate is `tests/`).
fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
#[ignore = "needs the prometheus binary; run by .ci/run with --ignored"]
fn the_readme_quickstart_delivers_prometheus_series_with_the_stamped_labels() {
    let prometheus = prometheus_binary().expect(
        "prometheus binary not found (install Debian's `prometheus` or set FANOUT_PROMETHEUS_BIN)",
    );
    let readme = read("README.md");
    for step in [
        "fanout -- serve --registry examples/registry.yaml --catalog all",
        "prometheus --config.file=examples/prometheus-receiver.yml --web.enable-remote-write-receiver --web.listen-address=127.0.0.1:9201 --storage.tsdb.path=",
        "prometheus --config.file=examples/prometheus.yml --web.listen-address=127.0.0.1:9090 --storage.tsdb.path=",
        "curl -s 'http://127.0.0.1:9201/api/v1/query?query=up'",
    ] {
        assert!(readme.contains(step), "the README's quickstart lacks {step:?}");
    }

    // The example files with free ports in place of the README's.
    let dir = temp_dir("quickstart");
    let (web, target) = (free_port(), free_port());
    let mut registry =
        read("examples/registry.yaml").replace("127.0.0.1:9201", &format!("127.0.0.1:{target}"));
    for fixed in ["9202", "9203", "9204"] {
        // Nothing listens there in the quickstart either: refused.
        registry = registry.replace(
            &format!("127.0.0.1:{fixed}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let reg = dir.join("registry.yaml");
    std::fs::write(&reg, registry).unwrap();

    // 1. The gateway (its helper picks the ingest port).
    let gw = Gateway::start(
        "quickstart",
        &["--registry", reg.to_str().unwrap(), "--catalog", "all"],
    );

    // 2. The target: a Prometheus receiving remote-write.
    let _target = prometheus_server(
        &prometheus,
        &repo().join("examples/prometheus-receiver.yml"),
        target,
        &dir.join("target"),
        true,
        &dir.join("target.log"),
    );
    let target_addr: SocketAddr = format!("127.0.0.1:{target}").parse().unwrap();
    wait_for(Duration::from_secs(60), || {
        http(target_addr, "GET", "/-/ready", &[], b"").filter(|(s, _)| *s == 200)
    })
    .expect("the target Prometheus was not ready within 60 s");

    let cluster = read("examples/prometheus.yml")
        .replace("127.0.0.1:9555", &gw.ingest)
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{web}"));
    assert!(cluster.contains(&gw.ingest) && cluster.contains(&format!("127.0.0.1:{web}")));
    std::fs::write(dir.join("prometheus.yml"), cluster).unwrap();

    // 3. The cluster's Prometheus.
    let _cluster = prometheus_server(
        &prometheus,
        &dir.join("prometheus.yml"),
        web,
        &dir.join("cluster"),
        false,
        &dir.join("cluster.log"),
    );

    // 4. The query of the README, until the series is there.
    let stamped = [
        r#""__name__":"up""#,
        r#""deploymentId":"dep-etl""#,
        r#""namespace":"etl-7x2k""#,
        r#""workspaceId":"ws-data""#,
        r#""organizationId":"org-acme""#,
        r#""cluster_organization_id":"org-platform""#,
        r#""cloud_provider":"aws""#,
        r#""cloud_region":"us-east-1""#,
        r#""env":"dev""#,
        r#""job":"prometheus""#,
    ];
    let found = wait_for(Duration::from_secs(90), || {
        let (s, body) = http(target_addr, "GET", "/api/v1/query?query=up", &[], b"")?;
        (s == 200 && stamped.iter().all(|l| body.contains(l))).then_some(body)
    });
    let logs = || {
        let cluster_log = std::fs::read_to_string(dir.join("cluster.log")).unwrap_or_default();
        let tail: Vec<&str> = cluster_log.lines().rev().take(20).collect();
        format!(
            "fanout log:\n{}\ncluster prometheus (last lines):\n{}",
            gw.log(),
            tail.join("\n")
        )
    };
    assert!(
        found.is_some(),
        "the target never showed the stamped `up` series\n{}",
        logs()
    );

    // The gateway's view: dev-prom delivered, nothing dropped unattributed
    // or filtered for the cluster's series.
    let (status, stats) = gw.request("GET", "/api/v1/stats", None);
    assert_eq!(status, 200, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    for reason in ["unattributed", "filtered"] {
        let n = stats["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drops.{reason} in {stats}"));
        assert_eq!(n, 0, "{reason}: {stats}");
    }

    // The targets as the README describes them: dev-prom delivering, the
    // prod-prom target of dep-etl's override (9203) retrying then failing,
    // onprem-vm (9204) idle: its cluster sends nothing. No target for
    // 9202: prod-prom's own endpoint, which its only Deployment overrides.
    assert!(
        readme.contains("9203") && readme.contains("`idle`"),
        "the README's quickstart no longer describes the targets"
    );
    let (status, targets) = gw.request("GET", "/api/v1/targets", None);
    assert_eq!(status, 200, "{targets}");
    let targets: serde_json::Value = serde_json::from_str(&targets).unwrap();
    let states: std::collections::BTreeMap<String, String> = targets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let feeds = t["feeds"].as_array().unwrap().iter().map(|f| {
                (
                    f["exportId"].as_str().unwrap(),
                    f["deploymentId"].as_str().unwrap(),
                )
            });
            let name = fanout_proto::api::target_label(feeds).unwrap();
            (name, t["state"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        states.keys().collect::<Vec<_>>(),
        ["dev-prom ·2", "onprem-vm ·1", "prod-prom ·1"],
        "{targets}"
    );
    assert_eq!(states["dev-prom ·2"], "healthy", "{targets}");
    assert!(
        ["retrying", "failing"].contains(&states["prod-prom ·1"].as_str()),
        "{targets}"
    );
    assert_eq!(states["onprem-vm ·1"], "idle", "{targets}");
    let _ = std::fs::remove_dir_all(&dir);
}
