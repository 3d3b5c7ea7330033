//! The rules of SPEC §3 as one table, run against every store.
//!
//! Each case writes a registry through [`Live::update`] (validation, store,
//! snapshot), optionally applies a merge patch the way the admin API does,
//! then checks the effective exports of every Deployment, which of them share
//! a target, and that a fresh load from the store resolves the same.
//! PostgreSQL runs when `FANOUT_TEST_POSTGRES_URL` is set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::live::Live;
use super::model::{masked, Document, Kind, Object, Registry, Secret};
use super::resolve::{effective_exports, Auth, EffectiveExport, ExportIndex};
use super::snapshot::{Attribution, Snapshot};
use super::store::{self, Store, UpdateError};
use super::{ops, validate};

const BASE: &str = r#"
clusters:
  - {id: c1, organizationId: org-c1, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: tok-c1}
  - {id: c2, organizationId: org-c2, cloudProvider: gcp, cloudRegion: europe-west1, ingestToken: tok-c2}
workspaces:
  - {id: ws-1, organizationId: org-1, name: One}
  - {id: ws-2, organizationId: org-2, name: Two}
deployments:
  - {id: dep-a, workspaceId: ws-1, clusterId: c1, namespace: ns-a, type: HOSTED, name: A}
  - {id: dep-b, workspaceId: ws-1, clusterId: c1, namespace: ns-b, type: HOSTED, name: B}
  - {id: dep-c, workspaceId: ws-1, clusterId: c2, namespace: ns-c, type: HOSTED, name: C}
  - {id: dep-h, workspaceId: ws-1, clusterId: c2, namespace: ns-h, type: HYBRID, name: H}
  - {id: dep-x, workspaceId: ws-2, clusterId: c2, namespace: ns-x, type: HOSTED, name: X}
"#;

const DEPLOYMENTS: [&str; 5] = ["dep-a", "dep-b", "dep-c", "dep-h", "dep-x"];

struct Case {
    name: &'static str,
    /// `metricsExports` of the document, as YAML.
    exports: &'static str,
    /// A merge patch applied to export `prom` after the write, like `PATCH /api/v1/metrics-exports/prom`.
    patch: Option<Value>,
    /// Per Deployment: its effective exports, as [`describe`] prints them.
    expect: &'static [(&'static str, &'static [&'static str])],
    /// Number of distinct targets in the snapshot.
    targets: usize,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "auto-linked workspace export reaches every HOSTED deployment of its workspace",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
"#,
            patch: None,
            expect: &[
                (
                    "dep-a",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                (
                    "dep-b",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                (
                    "dep-c",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                ("dep-h", &[]),
                ("dep-x", &[]),
            ],
            targets: 1,
        },
        Case {
            name: "restricted export reaches linked deployments only",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: false
  links: [{scope: DEPLOYMENT, scopeEntityId: dep-b}]
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
"#,
            patch: None,
            expect: &[
                ("dep-a", &[]),
                (
                    "dep-b",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                ("dep-c", &[]),
            ],
            targets: 1,
        },
        Case {
            name: "excluded deployment does not receive an auto-linked export",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  excludeLinks: [{scope: DEPLOYMENT, scopeEntityId: dep-a}]
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
"#,
            patch: None,
            expect: &[
                ("dep-a", &[]),
                (
                    "dep-b",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                (
                    "dep-c",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
            ],
            targets: 1,
        },
        Case {
            name: "hybrid deployment ignores workspace exports and gets its own",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
- id: hybrid-own
  objectKey: own
  scope: DEPLOYMENT
  scopeEntityId: dep-h
  metricsExport: {endpoint: "http://127.0.0.1:9209/api/v1/write"}
"#,
            patch: None,
            expect: &[
                (
                    "dep-h",
                    &["hybrid-own http://127.0.0.1:9209/api/v1/write none {} {}"],
                ),
                (
                    "dep-a",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
            ],
            targets: 2,
        },
        Case {
            name: "override of endpoint and auth applies to the linked deployment only",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides:
        metricsExport:
          endpoint: "http://127.0.0.1:9301/api/v1/write"
          authType: BASIC
          username: prod
          password: prod-pw
  metricsExport:
    endpoint: "http://127.0.0.1:9201/api/v1/write"
    authType: AUTH_TOKEN
    basicToken: dev-token
"#,
            patch: None,
            expect: &[
                (
                    "dep-a",
                    &["prom http://127.0.0.1:9301/api/v1/write basic:prod:prod-pw {} {}"],
                ),
                (
                    "dep-b",
                    &["prom http://127.0.0.1:9201/api/v1/write bearer:dev-token {} {}"],
                ),
            ],
            targets: 2,
        },
        Case {
            name: "headers and labels merge key by key, override wins",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides:
        metricsExport:
          headers: {x-scope-orgid: team-b, X-Extra: "1"}
          labels: {env: prod}
  metricsExport:
    endpoint: "http://127.0.0.1:9201/api/v1/write"
    headers: {X-Scope-OrgID: team-a, X-Debug: "on"}
    labels: {env: dev, tier: gold}
"#,
            patch: None,
            expect: &[
                (
                    "dep-a",
                    &[
                        r#"prom http://127.0.0.1:9201/api/v1/write none {"x-debug": "on", "x-extra": "1", "x-scope-orgid": "team-b"} {"env": "prod", "tier": "gold"}"#,
                    ],
                ),
                (
                    "dep-b",
                    &[
                        r#"prom http://127.0.0.1:9201/api/v1/write none {"x-debug": "on", "x-scope-orgid": "team-a"} {"env": "dev", "tier": "gold"}"#,
                    ],
                ),
            ],
            targets: 2,
        },
        Case {
            name: "unsetFields reverts fields of a stored override to the export's values",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides:
        metricsExport:
          endpoint: "http://127.0.0.1:9301/api/v1/write"
          headers: {X-Key: override}
          labels: {tier: silver}
  metricsExport:
    endpoint: "http://127.0.0.1:9201/api/v1/write"
    headers: {X-Key: base}
    labels: {tier: gold}
"#,
            patch: Some(
                json!({"links": [{"scope": "DEPLOYMENT", "scopeEntityId": "dep-a", "overrides": {"metricsExport": {
                "endpoint": "http://127.0.0.1:9301/api/v1/write", "headers": {"X-Key": "override"}, "labels": {"tier": "silver"},
                "unsetFields": ["headers.X-Key", "labels.tier"]}}}]}),
            ),
            expect: &[
                (
                    "dep-a",
                    &[
                        r#"prom http://127.0.0.1:9301/api/v1/write none {"x-key": "base"} {"tier": "gold"}"#,
                    ],
                ),
                (
                    "dep-b",
                    &[
                        r#"prom http://127.0.0.1:9201/api/v1/write none {"x-key": "base"} {"tier": "gold"}"#,
                    ],
                ),
            ],
            targets: 2,
        },
        Case {
            name: "switching autoLinkDeployments on keeps links and their overrides",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: false
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides: {metricsExport: {endpoint: "http://127.0.0.1:9301/api/v1/write"}}
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
"#,
            patch: Some(json!({"autoLinkDeployments": true})),
            expect: &[
                (
                    "dep-a",
                    &["prom http://127.0.0.1:9301/api/v1/write none {} {}"],
                ),
                (
                    "dep-b",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                (
                    "dep-c",
                    &["prom http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
                ("dep-h", &[]),
            ],
            targets: 2,
        },
        Case {
            name: "switching autoLinkDeployments off keeps links and their overrides",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides: {metricsExport: {endpoint: "http://127.0.0.1:9301/api/v1/write"}}
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
"#,
            patch: Some(json!({"autoLinkDeployments": false})),
            expect: &[
                (
                    "dep-a",
                    &["prom http://127.0.0.1:9301/api/v1/write none {} {}"],
                ),
                ("dep-b", &[]),
            ],
            targets: 1,
        },
        Case {
            name: "two exports with the same effective config resolve to one target",
            exports: r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  metricsExport:
    endpoint: "http://127.0.0.1:9201/api/v1/write"
    delivery: {maxSamplesPerSend: 2000, timeout: 30s}
- id: prom-again
  objectKey: prom_again
  scope: DEPLOYMENT
  scopeEntityId: dep-a
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
- id: other-ws
  objectKey: other
  scope: WORKSPACE
  scopeEntityId: ws-2
  autoLinkDeployments: true
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}
"#,
            patch: None,
            expect: &[
                (
                    "dep-a",
                    &[
                        "prom http://127.0.0.1:9201/api/v1/write none {} {}",
                        "prom-again http://127.0.0.1:9201/api/v1/write none {} {}",
                    ],
                ),
                (
                    "dep-x",
                    &["other-ws http://127.0.0.1:9201/api/v1/write none {} {}"],
                ),
            ],
            targets: 1,
        },
    ]
}

fn describe(e: &EffectiveExport) -> String {
    let auth = match &e.config.auth {
        Auth::None => "none".to_owned(),
        Auth::Bearer { token } => format!("bearer:{}", token.expose()),
        Auth::Basic { username, password } => format!("basic:{username}:{}", password.expose()),
        Auth::Sigv4 { region, .. } => format!("sigv4:{region}"),
    };
    let headers: BTreeMap<&String, &str> = e
        .config
        .headers
        .iter()
        .map(|(k, v)| (k, v.expose()))
        .collect();
    format!(
        "{} {} {auth} {headers:?} {:?}",
        e.export_id, e.config.endpoint, e.config.labels
    )
}

fn document(exports: &str) -> Document {
    let mut value: Value = super::model::parse_value(BASE.as_bytes(), true).unwrap();
    let exports = super::model::parse_value(exports.as_bytes(), true).unwrap();
    value["metricsExports"] = exports;
    Document::from_value(value).unwrap()
}

fn check(case: &Case, snapshot: &Snapshot, label: &str) {
    let registry = snapshot.registry();
    for (dep, expected) in case.expect {
        let got: Vec<String> = effective_exports(registry, dep, snapshot.salt())
            .iter()
            .map(describe)
            .collect();
        assert_eq!(
            &got, expected,
            "{label}: case {:?}: deployment {dep}",
            case.name
        );
    }
    assert_eq!(
        snapshot.targets().count(),
        case.targets,
        "{label}: case {:?}: distinct targets",
        case.name
    );
    // Every Deployment lists each of its targets once, and they are exactly the
    // targets of its effective exports; the index that resolves all of them
    // finds what the scan finds, in the same order.
    let mut index = ExportIndex::new(registry, snapshot.salt());
    for dep in DEPLOYMENTS {
        let d = &registry.deployments[dep];
        let indexed: Vec<(String, String)> = index
            .reached(d)
            .into_iter()
            .map(|(e, c)| (e.to_owned(), c.target_id.0.clone()))
            .collect();
        let scanned: Vec<(String, String)> = effective_exports(registry, dep, snapshot.salt())
            .into_iter()
            .map(|e| (e.export_id, e.target_id.0))
            .collect();
        assert_eq!(
            indexed, scanned,
            "{label}: case {:?}: index of {dep}",
            case.name
        );
        let mut want: Vec<String> = effective_exports(registry, dep, snapshot.salt())
            .into_iter()
            .map(|e| e.target_id.0)
            .collect();
        want.sort();
        want.dedup();
        let got: Vec<String> = snapshot
            .targets_of(&d.cluster_id, dep)
            .iter()
            .map(|t| t.id.0.clone())
            .collect();
        assert_eq!(got, want, "{label}: case {:?}: targets of {dep}", case.name);
    }
}

/// Everything a snapshot answers, as text: targets, and per Deployment its
/// attribution by id and by namespace, labels and targets.
fn describe_snapshot(s: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = s
        .targets()
        .map(|t| format!("target {} {:?} {:?}", t.id.0, t.routes, t.config.endpoint))
        .collect();
    for d in s.registry().deployments.values() {
        out.push(format!(
            "cluster of {}: {:?}",
            d.id,
            s.deployment_cluster_id(&d.id)
        ));
        let by_ns = s
            .deployment_by_namespace(&d.cluster_id, &d.namespace)
            .map(|i| i.id.clone());
        let Some(i) = s.deployment(&d.cluster_id, &d.id) else {
            out.push(format!("{}: none (namespace: {by_ns:?})", d.id));
            continue;
        };
        let targets: Vec<&str> = i.targets.iter().map(|t| t.id.0.as_str()).collect();
        out.push(format!(
            "{} ns {} -> {by_ns:?}; ws {} org {} name {} {:?} {:?}; cluster {:?}; targets {targets:?}",
            i.id, i.namespace, i.workspace_id, i.organization_id, i.name, i.kind, i.limits, i.cluster
        ));
    }
    for c in s.registry().clusters.values() {
        let by_token = s
            .authenticate(None, c.ingest_token.expose())
            .map(|i| i.id.clone());
        out.push(format!("token of {}: {by_token:?}", c.id));
    }
    out
}

async fn run_table(store: Arc<dyn Store>, label: &str) {
    let live = Live::open(store.clone()).await.unwrap();
    for case in cases() {
        let doc = document(case.exports);
        live.update(move |r| ops::replace_all(r, doc))
            .await
            .unwrap_or_else(|e| panic!("{label}: case {:?}: write failed: {e:?}", case.name));
        if let Some(p) = case.patch.clone() {
            live.update(move |r| ops::patch(r, Kind::MetricsExport, "prom", p))
                .await
                .unwrap_or_else(|e| panic!("{label}: case {:?}: patch failed: {e:?}", case.name));
        }
        check(&case, &live.current(), label);
        // The same from a fresh load of the store; the live snapshot, built
        // reusing the previous case's, equals a fresh build.
        let stored = store.load().await.unwrap();
        assert_eq!(stored.version, live.current().version());
        let fresh = Snapshot::build(stored.registry, stored.version, stored.salt);
        check(&case, &fresh, &format!("{label} (reloaded)"));
        assert_eq!(
            describe_snapshot(&live.current()),
            describe_snapshot(&fresh),
            "{label}: case {:?}: built after the previous version",
            case.name
        );
    }
}

#[tokio::test]
async fn rules_table_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(None, dir.path()).await.unwrap();
    run_table(store, "sqlite").await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (FANOUT_TEST_POSTGRES_URL); run by .ci/run"]
async fn rules_table_postgres() {
    let url = std::env::var("FANOUT_TEST_POSTGRES_URL").expect(
        "FANOUT_TEST_POSTGRES_URL: a PostgreSQL database for this test (.ci/run starts one)",
    );
    let store = store::open(Some(&url), std::path::Path::new("."))
        .await
        .unwrap();
    run_table(store, "postgres").await;
}

fn base_registry(exports: &str) -> Registry {
    let mut r = Registry::default();
    ops::replace_all(&mut r, document(exports)).unwrap();
    r
}

#[test]
fn every_rule_violation_is_listed_at_once() {
    let r = base_registry(
        r#"
- id: bad
  objectKey: bad
  scope: WORKSPACE
  scopeEntityId: ws-1
  links:
    - {scope: DEPLOYMENT, scopeEntityId: dep-h}
    - {scope: DEPLOYMENT, scopeEntityId: dep-x}
  excludeLinks: [{scope: DEPLOYMENT, scopeEntityId: dep-nope}]
  metricsExport:
    endpoint: "ftp://user:pw@127.0.0.1/x"
    authType: BASIC
    headers: {Content-Type: text/plain}
    labels: {namespace: x, __bad: y}
    delivery: {timeout: soon, diskBudget: lots, maxBytesPerSend: 100}
- id: dep-scoped
  objectKey: d
  scope: DEPLOYMENT
  scopeEntityId: dep-a
  autoLinkDeployments: true
  metricsExport: {endpoint: "http://127.0.0.1:1/w"}
- id: role
  objectKey: role
  scope: DEPLOYMENT
  scopeEntityId: dep-a
  metricsExport: {endpoint: "https://aps.example/w", authType: SIGV4, sigv4Region: us-east-1, sigv4RoleArn: "arn:aws:iam::1:role/w"}
"#,
    );
    let problems = validate(&r).unwrap_err().problems;
    let all = problems.join("\n");
    for needle in [
        "link dep-h: HYBRID deployments receive DEPLOYMENT-scope exports only",
        "link dep-x: deployment belongs to workspace ws-2, not ws-1",
        "excludeLinks dep-nope: deployment does not exist",
        "metricsExport.endpoint: must start with http:// or https://",
        "metricsExport.username: required by authType BASIC",
        "metricsExport.password: required by authType BASIC",
        "headers: Content-Type is set by Fanout",
        "labels: namespace is a metadata label",
        "labels: \"__bad\" is not a valid label name",
        "delivery.timeout:",
        "delivery.diskBudget:",
        "delivery.maxBytesPerSend: 100 bytes is too small (at least 1024)",
        "metricsExport dep-scoped: autoLinkDeployments applies to WORKSPACE scope only",
        "metricsExport.sigv4RoleArn: assuming a role is not supported yet",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("pw@"), "a credential leaked into:\n{all}");
}

#[test]
fn limits_are_read_written_back_and_checked() {
    let mut r = base_registry("");
    let c = r.clusters.values_mut().next().unwrap();
    c.limits.samples_per_second = Some(0);
    let cluster = c.id.clone();
    let d = r.deployments.values_mut().next().unwrap();
    d.limits.samples_per_second = Some(5);
    d.limits.series = Some(0);
    let dep = d.id.clone();
    let all = validate(&r).unwrap_err().problems.join("\n");
    for needle in [
        format!("cluster {cluster}: limits.samplesPerSecond must be at least 1"),
        format!("deployment {dep}: limits.series must be at least 1"),
        format!("deployment {dep}: limits.samplesPerSecond applies to clusters only"),
    ] {
        assert!(all.contains(&needle), "missing {needle:?} in:\n{all}");
    }
    // Set limits are read back; unset ones are not written at all.
    let doc = crate::registry::model::masked_document(&r);
    assert_eq!(doc["deployments"][0]["limits"]["series"], 0);
    let plain = crate::registry::model::masked_document(&base_registry(""));
    assert!(plain["clusters"][0].get("limits").is_none(), "{plain}");
}

#[test]
fn secrets_are_masked_in_reads_and_debug_and_kept_on_write_back() {
    let r = base_registry(
        r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides: {metricsExport: {authType: BASIC, username: u, password: link-secret}}
  metricsExport: {endpoint: "http://127.0.0.1:1/w", authType: AUTH_TOKEN, basicToken: top-secret}
"#,
    );
    let export = r.get(Kind::MetricsExport, "prom").unwrap();
    let read = masked(&export);
    let text = read.to_string();
    assert!(
        !text.contains("top-secret") && !text.contains("link-secret"),
        "{text}"
    );
    assert_eq!(read["setFields"], json!(["basicToken"]));
    assert_eq!(
        read["links"][0]["overrides"]["setFields"],
        json!(["password"])
    );
    assert_eq!(read["metricsExport"]["basicToken"], json!("***"));
    let cluster = masked(&r.get(Kind::Cluster, "c1").unwrap());
    assert_eq!(cluster["ingestToken"], json!("***"));
    assert_eq!(cluster["setFields"], json!(["ingestToken"]));

    let debug = format!("{r:?}");
    for secret in ["top-secret", "link-secret", "tok-c1"] {
        assert!(!debug.contains(secret), "{secret} in Debug output");
    }

    // Writing the masked read back keeps every stored secret.
    let mut r2 = r.clone();
    ops::replace(&mut r2, Kind::MetricsExport, "prom", read).unwrap();
    ops::replace(&mut r2, Kind::Cluster, "c1", cluster).unwrap();
    assert_eq!(r2, r);

    // A placeholder with nothing stored behind it is refused.
    let mut r3 = r.clone();
    let err = ops::create(
        &mut r3,
        json!({"id": "c9", "organizationId": "o", "cloudProvider": "aws", "cloudRegion": "x", "ingestToken": "***"}),
        Kind::Cluster,
    )
    .unwrap_err();
    assert!(matches!(err, UpdateError::Invalid(_)));
}

#[test]
fn header_values_and_query_values_are_secrets_unless_public() {
    let r = base_registry(
        r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  links:
    - scope: DEPLOYMENT
      scopeEntityId: dep-a
      overrides:
        metricsExport:
          endpoint: "http://127.0.0.1:2/w?api_key=link-q-secret"
          headers: {X-Api-Key: link-hdr-secret, X-Scope-OrgID: team-b, X-Tenant: t-b}
          publicHeaders: [X-Tenant]
  metricsExport:
    endpoint: "http://127.0.0.1:1/w?api_key=q-secret&flag"
    headers: {Authorization: "Bearer hdr-auth-secret", X-Api-Key: hdr-key-secret, X-Scope-OrgID: team-a}
    publicHeaders: [x-scope-orgid]
"#,
    );
    let export = r.get(Kind::MetricsExport, "prom").unwrap();
    let read = masked(&export);
    let text = read.to_string();
    for secret in [
        "q-secret",
        "hdr-auth-secret",
        "hdr-key-secret",
        "link-hdr-secret",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let me = &read["metricsExport"];
    assert_eq!(
        me["endpoint"],
        json!("http://127.0.0.1:1/w?api_key=***&***")
    );
    assert_eq!(me["headers"]["Authorization"], json!("***"));
    assert_eq!(me["headers"]["X-Api-Key"], json!("***"));
    assert_eq!(me["headers"]["X-Scope-OrgID"], json!("team-a"));
    assert_eq!(
        read["setFields"],
        json!(["headers.Authorization", "headers.X-Api-Key"])
    );
    // The export's publicHeaders apply to its overrides too.
    let ov = &read["links"][0]["overrides"];
    assert_eq!(
        ov["metricsExport"]["headers"],
        json!({"X-Api-Key": "***", "X-Scope-OrgID": "team-b", "X-Tenant": "t-b"})
    );
    assert_eq!(ov["setFields"], json!(["headers.X-Api-Key"]));
    assert_eq!(
        ov["metricsExport"]["endpoint"],
        json!("http://127.0.0.1:2/w?api_key=***")
    );
    let debug = format!("{r:?}");
    for secret in ["hdr-auth-secret", "hdr-key-secret", "link-hdr-secret"] {
        assert!(!debug.contains(secret), "{secret} in Debug output");
    }
    let eff = effective_exports(&r, "dep-a", b"salt");
    let config = format!("{:?}", eff[0].config);
    assert!(
        !config.contains("link-q-secret") && !config.contains("link-hdr-secret"),
        "{config}"
    );
    assert_eq!(
        eff[0].config.headers["x-api-key"].expose(),
        "link-hdr-secret"
    );

    // The read written back keeps every stored value.
    let mut r2 = r.clone();
    ops::replace(&mut r2, Kind::MetricsExport, "prom", read.clone()).unwrap();
    assert_eq!(r2, r);
    // A merge patch with "***" keeps the header; unsetFields still works.
    ops::patch(
        &mut r2,
        Kind::MetricsExport,
        "prom",
        json!({"metricsExport": {"headers": {"x-api-key": "***", "X-New": "v"}},
               "links": [{"scope": "DEPLOYMENT", "scopeEntityId": "dep-a", "overrides": {"metricsExport": {
                   "endpoint": "http://127.0.0.1:2/w?api_key=***",
                   "headers": {"X-Api-Key": "***", "X-Scope-OrgID": "team-b", "X-Tenant": "t-b"},
                   "unsetFields": ["headers.X-Api-Key"]}}}]}),
    )
    .unwrap();
    let e2 = &r2.metrics_exports["prom"];
    assert_eq!(
        e2.metrics_export.headers["x-api-key"].expose(),
        "hdr-key-secret"
    );
    assert_eq!(e2.metrics_export.headers["X-New"].expose(), "v");
    let ov2 = &e2.links[0].overrides.as_ref().unwrap().metrics_export;
    assert!(!ov2.headers.contains_key("X-Api-Key"), "unset");
    assert_eq!(
        ov2.endpoint.as_deref(),
        Some("http://127.0.0.1:2/w?api_key=link-q-secret")
    );

    // A masked endpoint that is not the stored one's read form is refused,
    // as is a header "***" with nothing stored.
    let mut bad = read.clone();
    bad["metricsExport"]["endpoint"] = json!("http://127.0.0.1:9/w?api_key=***&***");
    bad["metricsExport"]["headers"]["X-Other"] = json!("***");
    let Err(UpdateError::Invalid(problems)) =
        ops::replace(&mut r.clone(), Kind::MetricsExport, "prom", bad)
    else {
        panic!("a masked endpoint of another URL was accepted");
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("headers.X-Other is \"***\""),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("endpoint has a query value"),
        "{problems:?}"
    );

    // Authorization is never public.
    let mut public_auth = read;
    public_auth["metricsExport"]["publicHeaders"] = json!(["Authorization"]);
    let mut r3 = r.clone();
    ops::replace(&mut r3, Kind::MetricsExport, "prom", public_auth).unwrap();
    let problems = validate(&r3).unwrap_err().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("publicHeaders: Authorization is always a secret")),
        "{problems:?}"
    );
    let reread = masked(&r3.get(Kind::MetricsExport, "prom").unwrap());
    assert_eq!(
        reread["metricsExport"]["headers"]["Authorization"],
        json!("***")
    );
}

#[test]
fn attribution_follows_spec_section_4() {
    let r = base_registry("[]");
    let s = Snapshot::build(Arc::new(r), 1, Arc::from(&b"salt"[..]));
    let dep = |a: Attribution<'_>| match a {
        Attribution::Deployment(d) => format!("dep:{}", d.id),
        Attribution::Foreign => "foreign".into(),
        Attribution::Unattributed => "unattributed".into(),
    };
    assert_eq!(
        dep(s.attribute("c1", Some("dep-a"), Some("ns-b"))),
        "dep:dep-a"
    );
    assert_eq!(
        dep(s.attribute("c1", Some("dep-c"), Some("ns-a"))),
        "foreign"
    );
    assert_eq!(
        dep(s.attribute("c1", Some("nope"), Some("ns-b"))),
        "dep:dep-b"
    );
    assert_eq!(dep(s.attribute("c1", None, Some("ns-c"))), "unattributed");
    assert_eq!(dep(s.attribute("c1", None, None)), "unattributed");
    assert_eq!(s.authenticate(None, "tok-c2").unwrap().id, "c2");
    assert_eq!(
        s.authenticate(Some("c1"), "tok-c1")
            .unwrap()
            .organization_id,
        "org-c1"
    );
    assert!(s.authenticate(Some("c1"), "tok-c2").is_none());
    assert!(s.authenticate(None, "").is_none());
    let d = s.deployment("c1", "dep-a").unwrap();
    assert_eq!(
        (d.organization_id.as_str(), d.cluster.cloud_region.as_str()),
        ("org-1", "us-east-1")
    );
    assert!(s.deployment("c2", "dep-a").is_none());
    assert_eq!(s.deployment_by_namespace("c2", "ns-x").unwrap().id, "dep-x");
}

#[test]
fn deletes_of_referenced_objects_conflict() {
    let mut r = base_registry("[]");
    assert!(matches!(
        ops::delete(&mut r, Kind::Workspace, "ws-1"),
        Err(UpdateError::Conflict(_))
    ));
    assert!(matches!(
        ops::delete(&mut r, Kind::Cluster, "nope"),
        Err(UpdateError::NotFound(_))
    ));
    ops::delete(&mut r, Kind::Deployment, "dep-x").unwrap();
    ops::delete(&mut r, Kind::Workspace, "ws-2").unwrap();
    assert!(validate(&r).is_ok());
    let _ = Object::from_json(Kind::Workspace, json!({"id": "w", "organizationId": "o"})).unwrap();
}

#[test]
fn snapshot_diff_reports_added_changed_removed() {
    let salt: Arc<[u8]> = Arc::from(&b"s"[..]);
    let one = base_registry(
        r#"
- {id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: dep-a, metricsExport: {endpoint: "http://127.0.0.1:1/w"}}
- {id: e2, objectKey: e2, scope: DEPLOYMENT, scopeEntityId: dep-a, metricsExport: {endpoint: "http://127.0.0.1:2/w"}}
"#,
    );
    let two = base_registry(
        r#"
- {id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: dep-a, metricsExport: {endpoint: "http://127.0.0.1:1/w"}}
- {id: e1b, objectKey: e1b, scope: DEPLOYMENT, scopeEntityId: dep-b, metricsExport: {endpoint: "http://127.0.0.1:1/w"}}
- {id: e3, objectKey: e3, scope: DEPLOYMENT, scopeEntityId: dep-a, metricsExport: {endpoint: "http://127.0.0.1:3/w"}}
"#,
    );
    let a = Snapshot::build(Arc::new(one), 1, salt.clone());
    let b = Snapshot::build(Arc::new(two), 2, salt);
    let diff = b.diff_from(&a);
    let eps = |ts: &[Arc<super::Target>]| -> Vec<String> {
        ts.iter().map(|t| t.config.endpoint.clone()).collect()
    };
    assert_eq!(eps(&diff.added), ["http://127.0.0.1:3/w"]);
    assert_eq!(eps(&diff.changed), ["http://127.0.0.1:1/w"]);
    assert_eq!(diff.removed.len(), 1);
    assert!(b.diff_from(&b).is_empty());
}

#[test]
fn secret_matches_only_the_whole_value() {
    let s = Secret::new("s3cret-token");
    assert!(s.matches("s3cret-token"));
    assert!(!s.matches("s3cret-toke"));
    assert!(!s.matches("s3cret-token2"));
    assert!(!s.matches("S3cret-token"));
    assert!(!s.matches(""));
    assert!(Secret::new("").matches(""));
}

#[test]
fn registry_numeric_secrets_are_refused_without_echoing_them() {
    let yaml = "clusters:\n  - {id: c1, organizationId: o, cloudProvider: aws, cloudRegion: r, ingestToken: 987654321098}\n\
        metricsExports:\n  - {id: x, objectKey: x, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://h/x', authType: BASIC, username: u, password: 123456789012}}\n";
    let problems = crate::registry::Document::parse(yaml.as_bytes(), true).unwrap_err();
    let all = problems.join("\n");
    assert!(all.contains("must be a string"), "{all}");
    assert!(!all.contains("987654321098"), "{all}");
    assert!(!all.contains("123456789012"), "{all}");
}

#[test]
fn registry_a_huge_invalid_id_is_not_echoed_whole() {
    let id = "x".repeat(100_000) + "!";
    let doc = format!(
        "{{\"workspaces\": [{{\"id\": \"{id}\", \"organizationId\": \"o\", \"name\": \"n\"}}]}}"
    );
    let mut r = Registry::default();
    let problems = match Document::parse(doc.as_bytes(), false) {
        Err(p) => p,
        Ok(d) => {
            ops::replace_all(&mut r, d).unwrap();
            validate::validate(&r).unwrap_err().problems
        }
    };
    let all = problems.join("\n");
    assert!(all.contains("id must be"), "{}", &all[..all.len().min(300)]);
    assert!(all.len() < 1_000, "{} bytes of errors", all.len());
}

#[test]
fn registry_documents_with_a_key_twice_are_refused() {
    use crate::registry::model::parse_value;
    let e = parse_value(
        br#"{"id": "e", "metricsExport": {"endpoint": "http://a/w", "endpoint": "http://b/w"}}"#,
        false,
    )
    .unwrap_err();
    assert!(e.contains("duplicate key \"endpoint\""), "{e}");
    assert!(e.contains("line 1"), "where: {e}");
    let e = parse_value(b"id: e\nid: f\n", true).unwrap_err();
    assert!(e.contains("duplicate"), "{e}");
    assert!(parse_value(br#"{"a": [{"b": 1}, {"b": 2}]}"#, false).is_ok());
}

#[test]
fn registry_salts_are_random_and_long() {
    let (a, b) = (
        crate::registry::store::new_salt(),
        crate::registry::store::new_salt(),
    );
    assert_eq!(a.len(), 64);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

/// A store migrated and written by a newer gateway (simulated: a higher
/// `schema` level, and stored documents with fields this binary does not
/// know, at the top and nested): this gateway loads it, keeps the fields it
/// knows, and never moves the level down. A store whose `schema_compat`
/// says it needs a newer gateway is refused with a message that says so.
#[tokio::test]
async fn a_store_written_by_a_newer_gateway_is_used_not_rewritten_down() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
- id: prom
  objectKey: prom
  scope: WORKSPACE
  scopeEntityId: ws-1
  autoLinkDeployments: true
  metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write", labels: {env: dev}}
"#;
    {
        let store = store::open(None, dir.path()).await.unwrap();
        let doc = document(yaml);
        store
            .update(Box::new(move |r| ops::replace_all(r, doc)))
            .await
            .unwrap();
    }
    let url = format!(
        "sqlite://{}",
        dir.path().join(store::sqlite::FILE_NAME).display()
    );
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let newer = store::SCHEMA_LEVEL + 2;
    sqlx::query("UPDATE fanout_meta SET value = ?1 WHERE name = 'schema'")
        .bind(newer.to_string())
        .execute(&mut db)
        .await
        .unwrap();
    let row = sqlx::query("SELECT doc FROM fanout_objects WHERE id = 'prom'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    // The newer gateway also recorded a migration this binary does not know.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?1, 'from a newer gateway', TRUE, x'00', 0)",
    )
    .bind(newer as i64)
    .execute(&mut db)
    .await
    .unwrap();
    let mut doc: Value = serde_json::from_str(&row.get::<String, _>(0)).unwrap();
    doc["futureField"] = Value::from(1);
    doc["metricsExport"]["futureOption"] = Value::from(true);
    sqlx::query("UPDATE fanout_objects SET doc = ?1 WHERE id = 'prom'")
        .bind(doc.to_string())
        .execute(&mut db)
        .await
        .unwrap();

    let store = store::open(None, dir.path()).await.unwrap();
    let stored = store.load().await.unwrap();
    let Some(Object::MetricsExport(e)) = stored.registry.get(Kind::MetricsExport, "prom") else {
        panic!("export prom not loaded")
    };
    let json = serde_json::to_value(e).unwrap();
    assert_eq!(
        json["metricsExport"]["endpoint"],
        "http://127.0.0.1:9201/api/v1/write"
    );
    assert_eq!(json["metricsExport"]["labels"]["env"], "dev");
    drop(store);
    let level: String = sqlx::query("SELECT value FROM fanout_meta WHERE name = 'schema'")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, newer.to_string(), "the level was moved down");

    sqlx::query("UPDATE fanout_meta SET value = ?1 WHERE name = 'schema_compat'")
        .bind((store::SCHEMA_LEVEL + 1).to_string())
        .execute(&mut db)
        .await
        .unwrap();
    let e = store::open(None, dir.path()).await.err().expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("migrated by a newer gateway") && msg.contains("upgrade it"),
        "{msg}"
    );
}

/// A store made before migrations were recorded in `_sqlx_migrations`
/// (the tables and `schema` level 1 only) is adopted: migration 1 runs again
/// harmlessly and is recorded, the registry is kept. A recorded migration
/// whose SQL differs from this binary's is refused.
#[tokio::test]
async fn migrations_adopt_an_unrecorded_store_and_refuse_a_changed_one() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join(store::sqlite::FILE_NAME).display()
    );
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for statement in [
        "CREATE TABLE fanout_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE fanout_objects (kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, \
         version BIGINT NOT NULL, PRIMARY KEY (kind, id))",
        "INSERT INTO fanout_meta (name, value) VALUES ('version', '3'), ('schema', '1'), \
         ('schema_compat', '1'), ('target_salt', 'abcd')",
        r#"INSERT INTO fanout_objects VALUES ('workspace', 'ws-1', '{"id":"ws-1","organizationId":"o","name":"one"}', 3)"#,
    ] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }
    let store = store::open(None, dir.path()).await.unwrap();
    let stored = store.load().await.unwrap();
    assert_eq!(stored.version, 3);
    assert!(stored.registry.get(Kind::Workspace, "ws-1").is_some());
    drop(store);
    let recorded: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        recorded,
        (1..=store::SCHEMA_LEVEL as i64).collect::<Vec<_>>()
    );

    sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1")
        .execute(&mut db)
        .await
        .unwrap();
    let e = store::open(None, dir.path()).await.err().expect("refused");
    assert!(
        e.to_string()
            .contains("migration 1 was previously applied but has been modified"),
        "{e}"
    );
}

#[test]
fn each_backend_has_one_migration_per_level_in_order() {
    for set in [store::SQLITE_MIGRATIONS, store::POSTGRES_MIGRATIONS] {
        let versions: Vec<i64> = set.0.iter().map(|m| m.0).collect();
        assert_eq!(
            versions,
            (1..=store::SCHEMA_LEVEL as i64).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_stored_field_unknown_here_is_skipped_only_where_it_is_unknown() {
    // `labels` is known inside metricsExport; a newer top-level `labels`
    // goes, the nested one stays.
    let doc = serde_json::json!({
        "id": "prom", "objectKey": "prom", "scope": "WORKSPACE", "scopeEntityId": "ws-1",
        "labels": {"x": "y"},
        "metricsExport": {"endpoint": "http://127.0.0.1:1/w", "labels": {"env": "dev"}}
    });
    let (object, unknown) = store::parse_stored(Kind::MetricsExport, doc).unwrap();
    assert_eq!(unknown, ["labels"]);
    let json = object.to_stored_json();
    assert_eq!(json["metricsExport"]["labels"]["env"], "dev");
    assert!(json.get("labels").is_none());
    // A wrong type is still an error, not skipped.
    let bad = serde_json::json!({"id": 5});
    assert!(store::parse_stored(Kind::MetricsExport, bad).is_err());
}

/// A store starts an update from the registry it last read or wrote only
/// while the stored version is still that one: a write by another writer
/// in between (another gateway on the same database) is read, not lost.
#[tokio::test]
async fn updates_start_from_the_last_read_registry_only_while_it_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let a = store::open(None, dir.path()).await.unwrap();
    let b = store::open(None, dir.path()).await.unwrap();
    let workspace = |id: &'static str| {
        move |r: &mut Registry| {
            let w = json!({"id": id, "organizationId": "o", "name": id});
            ops::create(r, w, Kind::Workspace)
        }
    };
    a.update(Box::new(workspace("ws-1"))).await.unwrap();
    b.update(Box::new(workspace("ws-2"))).await.unwrap();
    let last = a.update(Box::new(workspace("ws-3"))).await.unwrap();
    assert_eq!(last.version, 3);
    let ids = |r: &Registry| r.workspaces.keys().cloned().collect::<Vec<_>>();
    assert_eq!(ids(&last.registry), ["ws-1", "ws-2", "ws-3"]);
    let fresh = store::open(None, dir.path())
        .await
        .unwrap()
        .load()
        .await
        .unwrap();
    assert_eq!(fresh.version, 3);
    assert_eq!(ids(&fresh.registry), ["ws-1", "ws-2", "ws-3"]);
}

/// A snapshot built reusing the previous version's equals a fresh build
/// through changes of every kind: a cluster's labels and token, a
/// Deployment moved to another cluster, renamed or re-namespaced, a
/// Workspace's organization, Deployments added and removed, an export's
/// endpoint, and a new salt.
#[test]
fn a_snapshot_built_after_another_equals_a_fresh_build() {
    let exports = r#"
- {id: prom, objectKey: prom, scope: WORKSPACE, scopeEntityId: ws-1, autoLinkDeployments: true,
   metricsExport: {endpoint: "http://127.0.0.1:9201/api/v1/write"}}
- {id: own-a, objectKey: own_a, scope: DEPLOYMENT, scopeEntityId: dep-a,
   metricsExport: {endpoint: "http://127.0.0.1:9202/a/api/v1/write"}}
"#;
    type Change = fn(&mut Registry);
    let changes: [(&str, Change); 9] = [
        ("nothing", |_| {}),
        ("a cluster's region", |r| {
            r.clusters.get_mut("c1").unwrap().cloud_region = "eu-west-1".into()
        }),
        ("a cluster's token", |r| {
            r.clusters.get_mut("c2").unwrap().ingest_token = Secret::new("tok-new")
        }),
        ("a Deployment moved", |r| {
            r.deployments.get_mut("dep-b").unwrap().cluster_id = "c2".into()
        }),
        ("a namespace and a name", |r| {
            let d = r.deployments.get_mut("dep-c").unwrap();
            d.namespace = "ns-c2".into();
            d.name = "C2".into();
        }),
        ("a Workspace's organization", |r| {
            r.workspaces.get_mut("ws-1").unwrap().organization_id = "org-9".into()
        }),
        ("a Deployment removed", |r| {
            r.deployments.remove("dep-x");
        }),
        ("a Deployment added", |r| {
            let mut d = r.deployments["dep-a"].clone();
            d.id = "dep-z".into();
            d.namespace = "ns-z".into();
            r.deployments.insert(d.id.clone(), d);
        }),
        ("an export's endpoint", |r| {
            let e = r.metrics_exports.get_mut("own-a").unwrap();
            e.metrics_export.endpoint = Some("http://127.0.0.1:9203/a/api/v1/write".into());
        }),
    ];
    let salt: Arc<[u8]> = Arc::from(&b"salt"[..]);
    let mut registry = base_registry(exports);
    let mut prev = Snapshot::build(Arc::new(registry.clone()), 1, salt.clone());
    for (version, (what, change)) in (2..).zip(changes) {
        change(&mut registry);
        validate::validate(&registry).unwrap_or_else(|e| panic!("{what}: {:?}", e.problems));
        let r = Arc::new(registry.clone());
        let after = Snapshot::build_after(r.clone(), version, salt.clone(), Some(&prev));
        let fresh = Snapshot::build(r, version, salt.clone());
        assert_eq!(
            describe_snapshot(&after),
            describe_snapshot(&fresh),
            "{what}"
        );
        // What did not change is the same object, not a copy.
        let kept = after
            .targets()
            .filter(|t| prev.target(&t.id.0).is_some_and(|p| Arc::ptr_eq(p, t)))
            .count();
        match what {
            "nothing" => assert_eq!(kept, after.targets().count(), "{what}"),
            "an export's endpoint" => assert_eq!(kept, 1, "{what}: prom's target is kept"),
            _ => {}
        }
        prev = after;
    }
    // Another salt: nothing is reused (every target id changes).
    let r = Arc::new(registry);
    let other: Arc<[u8]> = Arc::from(&b"other"[..]);
    let after = Snapshot::build_after(r.clone(), 20, other.clone(), Some(&prev));
    let fresh = Snapshot::build(r, 20, other);
    assert_eq!(
        describe_snapshot(&after),
        describe_snapshot(&fresh),
        "a new salt"
    );
}
