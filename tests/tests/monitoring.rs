//! The operators' kit of `deploy/monitoring/` against the real thing: a real
//! Prometheus 2.42 scrapes a live gateway under traffic, one of whose three
//! endpoints is down, with the shipped alert rules; every dashboard query
//! must return data, the target-failing and target-behind alerts must fire
//! for that target, and no other alert may even be pending. Also: the
//! PrometheusRule manifest holds exactly the rules of `alerts.yaml`, and
//! `docs/metrics.md` lists every metric the gateway exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_tests::fanout::Gateway;
use fanout_tests::prometheus::{free_port, http, prometheus_binary, prometheus_server, temp_dir};
use fanout_tests::rounds::{self, client, endpoint, round, sink_at};
use serde_yaml_ng::Value as Yaml;

const TOKEN: &str = "monitoring-token";

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file)
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_prometheusrule_manifest_holds_the_rules_of_alerts_yaml() {
    let rules = yaml(&monitoring("alerts.yaml"));
    let manifest = yaml(&monitoring("prometheusrule.yaml"));
    assert_eq!(manifest["kind"], Yaml::from("PrometheusRule"));
    assert_eq!(
        manifest["spec"]["groups"], rules["groups"],
        "deploy/monitoring/prometheusrule.yaml differs from alerts.yaml: regenerate it"
    );
}

#[test]
fn the_kustomize_component_names_files_that_exist_and_scrapes_as_job_fanout() {
    let k = yaml(&monitoring("kustomization.yaml"));
    assert_eq!(k["kind"], Yaml::from("Component"));
    let mut files: Vec<&str> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for generator in k["configMapGenerator"].as_sequence().unwrap() {
        files.extend(
            generator["files"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap()),
        );
    }
    for f in &files {
        assert!(monitoring(f).is_file(), "{f} is listed and missing");
    }
    let sm = yaml(&monitoring("servicemonitor.yaml"));
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["relabelings"][0]["replacement"],
        Yaml::from("fanout")
    );
    assert_eq!(endpoint["path"], Yaml::from("/metrics"));
    // It selects the headless service, which carries the label.
    let headless =
        yaml(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/service-headless.yaml"));
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        if k.as_str() != Some("app.kubernetes.io/name") {
            assert_eq!(&headless["metadata"]["labels"][k.as_str().unwrap()], v);
        }
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prom_get(prom: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(prom, "GET", path, &[], b"").expect("prometheus answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The shipped rules with the two alerts this test expects made quick:
/// `for: 0s`, and "behind" at 3 s instead of 120 s. Nothing else changes.
fn quick_rules() -> String {
    let mut rules = yaml(&monitoring("alerts.yaml"));
    let list = rules["groups"][0]["rules"].as_sequence_mut().unwrap();
    for rule in list.iter_mut() {
        let name = rule["alert"].as_str().unwrap_or_default().to_owned();
        if name == "FanoutTargetBehind" || name == "FanoutTargetFailing" {
            rule["for"] = Yaml::from("0s");
        }
        if name == "FanoutTargetBehind" {
            let expr = rule["expr"].as_str().unwrap().replace("> 120", "> 3");
            rule["expr"] = Yaml::from(expr);
        }
    }
    serde_yaml_ng::to_string(&rules).unwrap()
}

/// Every `expr` of the dashboard with its panel title, the variables filled
/// in as Grafana would for job "fanout" and all gateways.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("dashboard.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "fanout")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "30s");
            out.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary; run by .ci/run with --ignored"]
async fn a_live_gateway_fills_the_dashboard_and_fires_exactly_the_expected_alerts() {
    let prom_bin = prometheus_binary().expect("prometheus installed (FANOUT_PROMETHEUS_BIN)");
    let (p_a, p_b, p_down) = (free_port(), free_port(), free_port());
    let sink_a = sink_at(p_a, "a", &[]).await;
    let sink_b = sink_at(p_b, "b", &[]).await;
    let dir = temp_dir("monitoring");
    let registry = dir.join("registry.yaml");
    let mut reg = rounds::registry(TOKEN, "");
    reg.push_str("metricsExports:\n");
    for (id, port) in [("a", p_a), ("b", p_b), ("down", p_down)] {
        reg.push_str(&format!(
            "  - {{id: {id}, objectKey: {id}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{batchSendDeadline: 100ms}}}}}}\n",
            endpoint(port)
        ));
    }
    std::fs::write(&registry, reg).unwrap();
    let gw = Gateway::start("monitoring", &["--registry", registry.to_str().unwrap()]);
    let targets = rounds::targets(&gw);
    let id_of = |port: u16| {
        targets
            .iter()
            .find(|t| {
                t["endpoint"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!(":{port}/"))
            })
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("a target for port {port}: {targets:?}"))
    };
    let down = id_of(p_down);

    // Traffic: a round of 200 series every 250 ms until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, ingest) = (stop.clone(), gw.ingest.clone());
        tokio::spawn(async move {
            let http = client();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) && seq < 2_000 {
                assert_eq!(
                    rounds::write(&http, &ingest, TOKEN, round(0, seq)).await,
                    204
                );
                seq += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seq
        })
    };

    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, quick_rules()).unwrap();
    let admin = gw.admin.trim_start_matches("http://").to_owned();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: fanout\n    authorization: {{credentials: '{}'}}\n    static_configs: [{{targets: ['{admin}']}}]\n",
            rules.display(),
            gw.token
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let prom_log = dir.join("prometheus.log");
    let _prom = prometheus_server(
        &prom_bin,
        &config,
        prom_port,
        &dir.join("data"),
        false,
        &prom_log,
    );

    // The two alerts fire for the dead target, and nothing else is ever
    // pending or firing.
    let expected: BTreeSet<&str> = ["FanoutTargetBehind", "FanoutTargetFailing"].into();
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = Instant::now();
    let mut firing = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((200, body)) = http(prom_addr, "GET", "/api/v1/alerts", &[], b"") else {
            assert!(
                Instant::now() < deadline,
                "prometheus never answered:\n{}",
                std::fs::read_to_string(&prom_log).unwrap_or_default()
            );
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for a in v["data"]["alerts"].as_array().unwrap() {
            let name = a["labels"]["alertname"].as_str().unwrap();
            assert!(expected.contains(name), "unexpected alert {a}");
            assert_eq!(
                a["labels"]["target"],
                serde_json::Value::from(down.clone()),
                "only the dead target: {a}"
            );
            if a["state"] == "firing" {
                firing
                    .entry(name.to_owned())
                    .or_insert_with(|| started.elapsed());
            }
        }
        if firing.len() == expected.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts firing after 120 s: {firing:?}\nlast answer: {body}\ngateway log:\n{}",
            gw.log()
        );
    }

    // Every dashboard query returns data.
    let mut empty = Vec::new();
    let mut figures = Vec::new();
    for (title, expr) in dashboard_queries() {
        let v = prom_get(prom_addr, &format!("/api/v1/query?query={}", encode(&expr)));
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        figures.push(format!("{n:>3} series  {title}: {expr}"));
        if n == 0 {
            empty.push((title, expr));
        }
    }
    // The healthy targets delivered meanwhile, and no alert for them above.
    stop.store(true, Ordering::Relaxed);
    let rounds_written = writer.await.unwrap();
    let (ra, rb) = (sink_a.report(), sink_b.report());

    println!("alerts firing for the dead target after (from Prometheus' start): {firing:?}");
    println!(
        "{} dashboard queries:\n{}",
        figures.len(),
        figures.join("\n")
    );
    println!(
        "rounds written {rounds_written}; sink a {} requests, sink b {} requests",
        ra.requests, rb.requests
    );
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );
    assert!(ra.requests > 0 && rb.requests > 0);

    // docs/metrics.md lists every metric the gateway exposes.
    let (_, text) = gw.request("GET", "/metrics", None);
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
            .unwrap();
    let missing: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/metrics.md: {missing:?}"
    );
}
