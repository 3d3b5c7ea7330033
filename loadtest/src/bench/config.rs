//! What each gateway under test is told, derived from a [`BenchSpec`] (pure).
//!
//! - Fanout: a declarative registry (docs/registry.md): one cluster per
//!   simulated cluster with the generator's token, one Workspace, every
//!   Deployment HOSTED in it with the generator's namespace, and one
//!   Workspace export per target, auto-linked when every Deployment goes
//!   everywhere, else restricted with a link per routed Deployment.
//! - vmagent: one `-remoteWrite.url` per target; a global
//!   `-remoteWrite.relabelConfig` that sets `deploymentId` from `namespace`
//!   (the only per-Deployment label here): the one regex rule a user would
//!   write where the ids derive from the namespaces
//!   ([`crate::scenario::Scenario::deployment_id_rule`]: up to 100 clusters
//!   and 100 Deployments per cluster), else one rule per Deployment; the
//!   labels that are the same for the whole fleet as `-remoteWrite.label`;
//!   and, unless every Deployment goes everywhere, a
//!   `-remoteWrite.urlRelabelConfig` per URL that keeps that target's
//!   `deploymentId`s.
//!
//! Both gateways therefore deliver the same series with the same metadata
//! labels ([`expected_labels`]) to the same targets, and the sinks check it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::spec::BenchSpec;

/// The Workspace every bench Deployment belongs to.
pub const WORKSPACE: &str = "ws-load";
/// The Workspace's organization (`organizationId`).
pub const ORGANIZATION: &str = "org-load";
/// The clusters' organization (`cluster_organization_id`).
pub const CLUSTER_ORGANIZATION: &str = "org-load-infra";
/// The clusters' `cloud_provider`.
pub const CLOUD_PROVIDER: &str = "aws";
/// The clusters' `cloud_region`.
pub const CLOUD_REGION: &str = "us-east-1";

/// The export id of target `t`.
pub fn export_id(t: usize) -> String {
    format!("bench-t{t}")
}

/// The registry of `fanout-load print-registry`: `scenario`'s clusters and
/// Deployments, and one Workspace export per URL linked to every Deployment.
pub fn registry_for(scenario: &crate::scenario::Scenario, urls: &[String]) -> Value {
    let spec = BenchSpec {
        name: "print-registry".into(),
        description: String::new(),
        fleet: scenario.clone(),
        targets: urls.len(),
        targets_per_deployment: urls.len(),
        dead_targets: Default::default(),
        traffic: super::spec::Traffic {
            samples: 0,
            rate: None,
            connections: 1,
            samples_per_request: 2000,
            max_duration: std::time::Duration::from_secs(60),
        },
        batch: 2000,
        protocol: Default::default(),
        drain_timeout: std::time::Duration::from_secs(60),
        target_delay: std::time::Duration::ZERO,
        target_jitter: std::time::Duration::ZERO,
        outage: None,
    };
    registry(&spec, urls)
}

/// The registry document (serialize as YAML or JSON) for `spec`, with
/// target `t` at `urls[t]`.
pub fn registry(spec: &BenchSpec, urls: &[String]) -> Value {
    let f = &spec.fleet;
    let clusters: Vec<Value> = (0..f.clusters)
        .map(|c| {
            json!({
                "id": f.cluster_id(c),
                "organizationId": CLUSTER_ORGANIZATION,
                "cloudProvider": CLOUD_PROVIDER,
                "cloudRegion": CLOUD_REGION,
                "ingestToken": f.cluster_token(c),
            })
        })
        .collect();
    let mut deployments = Vec::new();
    for c in 0..f.clusters {
        for d in 0..f.deployments {
            deployments.push(json!({
                "id": f.deployment_id(c, d),
                "workspaceId": WORKSPACE,
                "clusterId": f.cluster_id(c),
                "namespace": f.namespace(c, d),
                "type": "HOSTED",
                "name": format!("load-{c}-{d}"),
            }));
        }
    }
    let exports: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(t, url)| {
            let mut e = json!({
                "id": export_id(t),
                "objectKey": export_id(t).replace('-', "_"),
                "scope": "WORKSPACE",
                "scopeEntityId": WORKSPACE,
                "description": format!("bench target {}", BenchSpec::target_name(t)),
                "autoLinkDeployments": spec.all_to_all(),
                "metricsExport": {
                    "endpoint": url,
                    "exporterType": "PROMETHEUS",
                    "delivery": {"maxSamplesPerSend": spec.batch},
                },
            });
            if spec.protocol == super::spec::Protocol::V2 {
                e["metricsExport"]["delivery"]["protocol"] = json!("V2");
            }
            if !spec.all_to_all() {
                let links: Vec<Value> = spec
                    .deployments_of(t)
                    .into_iter()
                    .map(|(c, d)| json!({"scope": "DEPLOYMENT", "scopeEntityId": f.deployment_id(c, d)}))
                    .collect();
                e["links"] = Value::Array(links);
            }
            e
        })
        .collect();
    json!({
        "clusters": clusters,
        "workspaces": [{"id": WORKSPACE, "organizationId": ORGANIZATION, "name": "fanout-load bench"}],
        "deployments": deployments,
        "metricsExports": exports,
    })
}

/// The metadata labels every delivered series of Deployment `d` of `cluster`
/// must carry, whichever gateway delivered it.
pub fn expected_labels(spec: &BenchSpec, cluster: u32, d: u32) -> Vec<(String, String)> {
    fleet_labels(&spec.fleet, cluster, d)
}

/// [`expected_labels`] of a fleet's Deployment `d` of `cluster`.
pub fn fleet_labels(f: &crate::scenario::Scenario, cluster: u32, d: u32) -> Vec<(String, String)> {
    [
        ("cloud_provider", CLOUD_PROVIDER.to_owned()),
        ("cloud_region", CLOUD_REGION.to_owned()),
        ("cluster_organization_id", CLUSTER_ORGANIZATION.to_owned()),
        ("deploymentId", f.deployment_id(cluster, d)),
        ("namespace", f.namespace(cluster, d)),
        ("organizationId", ORGANIZATION.to_owned()),
        ("workspaceId", WORKSPACE.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// vmagent's command line and the files it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmagentSetup {
    /// Arguments (without the program).
    pub args: Vec<String>,
    /// Files to write before starting it: (path, content).
    pub files: Vec<(PathBuf, String)>,
}

/// vmagent listening on `listen`, with data and config files under `dir`,
/// sending target `t` to `urls[t]`.
pub fn vmagent(spec: &BenchSpec, urls: &[String], listen: SocketAddr, dir: &Path) -> VmagentSetup {
    let f = &spec.fleet;
    let mut files = Vec::new();
    let global = deployment_id_relabelling(f);
    let global_path = dir.join("relabel.yaml");
    files.push((global_path.clone(), global));
    let mut args = vec![
        format!("-httpListenAddr={listen}"),
        format!(
            "-remoteWrite.tmpDataPath={}",
            dir.join("vmagent-data").display()
        ),
        format!("-remoteWrite.relabelConfig={}", global_path.display()),
        format!("-remoteWrite.maxRowsPerBlock={}", spec.batch),
        "-loggerLevel=WARN".to_owned(),
    ];
    for (k, v) in [
        ("cloud_provider", CLOUD_PROVIDER),
        ("cloud_region", CLOUD_REGION),
        ("cluster_organization_id", CLUSTER_ORGANIZATION),
        ("organizationId", ORGANIZATION),
        ("workspaceId", WORKSPACE),
    ] {
        args.push(format!("-remoteWrite.label={k}={v}"));
    }
    for (t, url) in urls.iter().enumerate() {
        args.push(format!("-remoteWrite.url={url}"));
        if !spec.all_to_all() {
            let ids: Vec<String> = spec
                .deployments_of(t)
                .into_iter()
                .map(|(c, d)| regex_escape(&f.deployment_id(c, d)))
                .collect();
            let path = dir.join(format!("url-{t}.yaml"));
            files.push((
                path.clone(),
                format!(
                    "- action: keep\n  source_labels: [deploymentId]\n  regex: {}\n",
                    yaml_str(&ids.join("|"))
                ),
            ));
            args.push(format!("-remoteWrite.urlRelabelConfig={}", path.display()));
        }
    }
    VmagentSetup { args, files }
}

/// vmagent's global relabelling: `deploymentId` from `namespace`, with one
/// rule when the ids derive from the namespaces, else one per Deployment.
fn deployment_id_relabelling(f: &crate::scenario::Scenario) -> String {
    let rule = |regex: &str, replacement: &str| {
        format!(
            "- action: replace\n  source_labels: [namespace]\n  regex: {}\n  target_label: deploymentId\n  replacement: {}\n",
            yaml_str(regex),
            yaml_str(replacement),
        )
    };
    if let Some((regex, replacement)) = f.deployment_id_rule() {
        return format!(
            "# deploymentId from namespace: one rule, as a user would write it\n{}",
            rule(&regex, &replacement)
        );
    }
    let mut out = String::from(
        "# deploymentId from namespace, one rule per Deployment (the ids do not derive from the namespaces)\n",
    );
    for c in 0..f.clusters {
        for d in 0..f.deployments {
            out.push_str(&rule(
                &regex_escape(&f.namespace(c, d)),
                &f.deployment_id(c, d),
            ));
        }
    }
    out
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A double-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> BenchSpec {
        BenchSpec::parse("t.yaml", text).unwrap()
    }

    fn urls(n: usize) -> Vec<String> {
        (0..n)
            .map(|t| format!("http://127.0.0.1:{}/api/v1/write", 9000 + t))
            .collect()
    }

    #[test]
    fn registry_auto_links_when_all_to_all() {
        let s = spec("name: f3\nfleet: {clusters: 2, deployments: 3}\ntargets: 3\ntraffic: {samples: 1}\nbatch: 5000\n");
        let r = registry(&s, &urls(3));
        assert_eq!(r["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(r["clusters"][1]["ingestToken"], s.fleet.cluster_token(1));
        assert_eq!(r["deployments"].as_array().unwrap().len(), 6);
        assert_eq!(r["deployments"][4]["namespace"], s.fleet.namespace(1, 1));
        assert_eq!(r["deployments"][4]["clusterId"], s.fleet.cluster_id(1));
        let e = r["metricsExports"].as_array().unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[2]["autoLinkDeployments"], true);
        assert!(e[2].get("links").is_none());
        assert_eq!(e[2]["metricsExport"]["endpoint"], urls(3)[2]);
        assert_eq!(e[2]["metricsExport"]["delivery"]["maxSamplesPerSend"], 5000);
        // The YAML form is what `fanout serve --registry` reads.
        let y = serde_yaml_ng::to_string(&r).unwrap();
        assert!(y.contains("metricsExports:"));
    }

    #[test]
    fn registry_links_routed_deployments() {
        let s = spec("name: r\nfleet: {clusters: 2, deployments: 4}\ntargets: 4\ntargetsPerDeployment: 1\ntraffic: {samples: 1}\n");
        let r = registry(&s, &urls(4));
        let e = &r["metricsExports"][1];
        assert_eq!(e["autoLinkDeployments"], false);
        let links: Vec<&str> = e["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["scopeEntityId"].as_str().unwrap())
            .collect();
        assert_eq!(
            links,
            vec![s.fleet.deployment_id(0, 1), s.fleet.deployment_id(1, 1)]
        );
    }

    #[test]
    fn vmagent_routes_by_deployment_id() {
        let s = spec("name: r\nfleet: {clusters: 2, deployments: 2}\ntargets: 2\ntargetsPerDeployment: 1\ntraffic: {samples: 1}\nbatch: 3000\n");
        let dir = Path::new("/tmp/b");
        let v = vmagent(&s, &urls(2), "127.0.0.1:8429".parse().unwrap(), dir);
        assert!(v
            .args
            .contains(&"-httpListenAddr=127.0.0.1:8429".to_owned()));
        assert!(v
            .args
            .contains(&"-remoteWrite.maxRowsPerBlock=3000".to_owned()));
        assert!(v
            .args
            .contains(&"-remoteWrite.label=workspaceId=ws-load".to_owned()));
        let urls_args: Vec<&String> = v
            .args
            .iter()
            .filter(|a| a.starts_with("-remoteWrite.url="))
            .collect();
        assert_eq!(urls_args.len(), 2);
        let rel: Vec<&String> = v
            .args
            .iter()
            .filter(|a| a.starts_with("-remoteWrite.urlRelabelConfig="))
            .collect();
        assert_eq!(rel.len(), 2);
        // url-1 keeps exactly the Deployments routed to target 1.
        let (_, url1) = v
            .files
            .iter()
            .find(|(p, _)| p.ends_with("url-1.yaml"))
            .unwrap();
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(url1).unwrap();
        let regex = parsed[0]["regex"].as_str().unwrap();
        assert_eq!(
            regex,
            format!(
                "{}|{}",
                s.fleet.deployment_id(0, 1),
                s.fleet.deployment_id(1, 1)
            )
        );
        assert_eq!(parsed[0]["action"].as_str(), Some("keep"));
        // The global file derives every Deployment id from its namespace
        // with the one rule a user would write.
        let (_, global) = &v.files[0];
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(global).unwrap();
        let rules = parsed.as_sequence().unwrap();
        assert_eq!(rules.len(), 1);
        let (regex, replacement) = s.fleet.deployment_id_rule().unwrap();
        assert_eq!(rules[0]["regex"].as_str(), Some(regex.as_str()));
        assert_eq!(rules[0]["replacement"].as_str(), Some(replacement.as_str()));
        assert_eq!(rules[0]["source_labels"][0].as_str(), Some("namespace"));
        assert_eq!(rules[0]["target_label"].as_str(), Some("deploymentId"));
    }

    #[test]
    fn vmagent_gets_one_rule_per_deployment_where_ids_do_not_derive() {
        let s = spec("name: big\nfleet: {clusters: 101, deployments: 2, dags: 1, tasks: 1}\ntargets: 1\ntraffic: {samples: 1}\n");
        let v = vmagent(
            &s,
            &urls(1),
            "127.0.0.1:1".parse().unwrap(),
            Path::new("/x"),
        );
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&v.files[0].1).unwrap();
        let rules = parsed.as_sequence().unwrap();
        assert_eq!(rules.len(), 202);
        assert_eq!(
            rules[201]["regex"].as_str().unwrap(),
            s.fleet.namespace(100, 1)
        );
        assert_eq!(
            rules[201]["replacement"].as_str().unwrap(),
            s.fleet.deployment_id(100, 1)
        );
    }

    #[test]
    fn vmagent_without_url_relabelling_when_all_to_all() {
        let s = spec("name: f\ntargets: 3\ntraffic: {samples: 1}\n");
        let v = vmagent(
            &s,
            &urls(3),
            "127.0.0.1:1".parse().unwrap(),
            Path::new("/x"),
        );
        assert!(!v.args.iter().any(|a| a.contains("urlRelabelConfig")));
        assert_eq!(v.files.len(), 1);
    }

    #[test]
    fn expected_labels_are_sorted_and_complete() {
        let s = spec("name: f\ntargets: 1\ntraffic: {samples: 1}\n");
        let l = expected_labels(&s, 1, 2);
        assert_eq!(l.len(), 7);
        assert!(l.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(l.contains(&("namespace".to_owned(), s.fleet.namespace(1, 2))));
    }

    #[test]
    fn escapes_regex_metacharacters() {
        assert_eq!(regex_escape("a.b|c"), "a\\.b\\|c");
        assert_eq!(
            regex_escape("elementary-zenith-0001"),
            "elementary-zenith-0001"
        );
    }
}
