//! The JSON the console reads from a gateway's admin API (`docs/stats-api.md`,
//! SPEC §3 and §6), as lenient serde types.
//!
//! Every field has a default, unknown fields are ignored and every number is
//! an `f64`, so a gateway one version ahead or behind still renders. What
//! cannot be parsed at all becomes an error line in the console, never a
//! panic ([`parse`]).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Parses a JSON body, naming what it was in the error.
pub fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("unreadable {what}: {e}"))
}

/// One stats snapshot (`GET /api/v1/stats`, one SSE event of the stream).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Snapshot {
    /// When the gateway took it (RFC 3339).
    pub time: String,
    /// Seconds since the gateway started.
    pub uptime_seconds: f64,
    /// The gateway's name (`host:port`).
    pub gateway: String,
    /// Registry version in force.
    pub config_version: f64,
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// The gateway is draining (SIGTERM).
    pub draining: bool,
    /// Ingest counters.
    pub ingest: Ingest,
    /// Dropped samples by reason.
    pub drops: BTreeMap<String, f64>,
    /// Delivered to targets.
    pub out: Counters,
    /// Every target.
    pub targets: Vec<Target>,
    /// The latest delivery errors.
    pub recent_errors: Vec<RecentError>,
}

/// Ingest counters of a snapshot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Ingest {
    /// Responses by transport (`http1`, `h2`, `h3`) and status code.
    pub requests: BTreeMap<String, BTreeMap<String, f64>>,
    /// Samples accepted.
    pub samples: f64,
    /// Series accepted.
    pub series: f64,
    /// Request bytes received.
    pub bytes: f64,
    /// Bytes of requests being processed.
    pub in_flight_bytes: f64,
    /// The in-memory budget.
    pub memory_budget_bytes: f64,
}

impl Ingest {
    /// Total responses and those that were not 2xx.
    pub fn responses(&self) -> (f64, f64) {
        let mut total = 0.0;
        let mut errors = 0.0;
        for by_status in self.requests.values() {
            for (status, n) in by_status {
                total += n;
                if !status.starts_with('2') {
                    errors += n;
                }
            }
        }
        (total, errors)
    }
}

/// Samples and bytes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Counters {
    /// Samples.
    pub samples: f64,
    /// Bytes.
    pub bytes: f64,
}

/// One delivery target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Target {
    /// Target id (never a URL).
    pub id: String,
    /// Endpoint without userinfo and query.
    pub endpoint: String,
    /// `healthy`, `retrying`, `failing` or `paused`.
    pub state: String,
    /// Paused by an operator.
    pub paused: bool,
    /// Bytes queued in memory.
    pub queue_bytes: f64,
    /// Samples queued.
    pub queue_samples: f64,
    /// Bytes in the disk spill.
    pub spill_bytes: f64,
    /// Age of the oldest queued data.
    pub oldest_queued_seconds: f64,
    /// Samples delivered.
    pub samples_sent: f64,
    /// Bytes delivered.
    pub bytes_sent: f64,
    /// Requests that succeeded.
    pub requests_sent: f64,
    /// Retries.
    pub retries: f64,
    /// Failed attempts by status or kind (`503`, `timeout`, `connect`).
    pub failures: BTreeMap<String, f64>,
    /// Dropped samples by reason.
    pub dropped: BTreeMap<String, f64>,
    /// The last error, if any.
    pub last_error: Option<LastError>,
    /// Current concurrency limit.
    pub concurrency: f64,
    /// Requests in flight.
    pub in_flight: f64,
    /// Request latency percentiles.
    pub latency_ms: Latency,
    /// What feeds this target.
    pub feeds: Vec<Feed>,
}

impl Target {
    /// All failed attempts.
    pub fn failures_total(&self) -> f64 {
        self.failures.values().sum()
    }
}

/// A target's last error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LastError {
    /// When (RFC 3339).
    pub time: String,
    /// HTTP status, absent for connection errors.
    pub status: Option<f64>,
    /// What happened.
    pub message: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// One export × Deployment that routes to a target.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", default)]
pub struct Feed {
    /// Metrics export id.
    pub export_id: String,
    /// Deployment id.
    pub deployment_id: String,
    /// Cluster id.
    pub cluster_id: String,
}

/// A delivery error of the `recentErrors` list.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RecentError {
    /// When (RFC 3339).
    pub time: String,
    /// Target id.
    pub target_id: String,
    /// HTTP status, absent for connection errors.
    pub status: Option<f64>,
    /// What happened.
    pub message: String,
}

/// `GET /api/v1/targets`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TargetList {
    /// Every target.
    pub items: Vec<Target>,
}

/// The declarative registry document (`GET /api/v1/registry`), secrets masked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Registry {
    /// Clusters.
    pub clusters: Vec<Cluster>,
    /// Workspaces.
    pub workspaces: Vec<Workspace>,
    /// Deployments.
    pub deployments: Vec<Deployment>,
    /// Metrics exports.
    pub metrics_exports: Vec<MetricsExport>,
}

impl Registry {
    /// Nothing at all is registered.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
            && self.workspaces.is_empty()
            && self.deployments.is_empty()
            && self.metrics_exports.is_empty()
    }
}

/// A cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Cluster {
    /// Id.
    pub id: String,
    /// Organization of the cluster.
    pub organization_id: String,
    /// Cloud provider.
    pub cloud_provider: String,
    /// Cloud region.
    pub cloud_region: String,
}

/// A Workspace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Workspace {
    /// Id.
    pub id: String,
    /// Organization.
    pub organization_id: String,
    /// Display name.
    pub name: String,
}

/// A Deployment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Deployment {
    /// Id.
    pub id: String,
    /// Its Workspace.
    pub workspace_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// `HOSTED` or `HYBRID`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Display name.
    pub name: String,
}

/// A metrics export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsExport {
    /// Id.
    pub id: String,
    /// Object key.
    pub object_key: String,
    /// `WORKSPACE` or `DEPLOYMENT`.
    pub scope: String,
    /// The Workspace or Deployment id.
    pub scope_entity_id: String,
    /// Description.
    pub description: String,
    /// Linked to all Deployments of the Workspace.
    pub auto_link_deployments: bool,
    /// Links to Deployments, with overrides.
    pub links: Vec<Link>,
    /// Deployments excluded from auto-linking.
    pub exclude_links: Vec<Link>,
    /// The export's fields (secrets masked).
    pub metrics_export: Value,
}

/// A link (or exclusion) of an export to a Deployment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Link {
    /// `DEPLOYMENT`.
    pub scope: String,
    /// Deployment id.
    pub scope_entity_id: String,
    /// Overrides (`{"metricsExport": {...}}`), if any.
    pub overrides: Value,
}

impl Link {
    /// The overridden field names, dotted (`endpoint`, `headers.X-Debug`).
    pub fn override_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(Value::Object(fields)) = self.overrides.get("metricsExport") {
            for (k, v) in fields {
                match (k.as_str(), v) {
                    ("unsetFields" | "setFields", _) => {}
                    (_, Value::Object(inner)) => {
                        out.extend(inner.keys().map(|i| format!("{k}.{i}")));
                    }
                    _ => out.push(k.clone()),
                }
            }
        }
        out
    }
}

/// One effective export of a Deployment
/// (`GET /api/v1/deployments/{id}/metrics-exports`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EffectiveExport {
    /// Export id.
    pub id: String,
    /// Object key.
    pub object_key: String,
    /// Where it comes from: `WORKSPACE` or `DEPLOYMENT`.
    pub source_scope: String,
    /// The Workspace or Deployment id.
    pub source_scope_entity_id: String,
    /// The target it resolves to.
    pub target_id: String,
    /// Merged fields, secrets masked.
    pub metrics_export: Value,
    /// Secret fields that are set.
    pub set_fields: Vec<String>,
}

/// `{"items": [...]}` of effective exports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EffectiveList {
    /// The effective exports.
    pub items: Vec<EffectiveExport>,
}

/// Field names whose values are secrets: the console masks them whatever the
/// gateway sent.
pub const SECRET_FIELDS: &[&str] = &[
    "ingestToken",
    "basicToken",
    "password",
    "sigv4SecretKey",
    "token",
    "secret",
];

/// Flattens an export's fields into `name = value` lines, secrets masked,
/// objects one level deep (`headers.X-Scope-OrgID = team-a`).
pub fn field_lines(fields: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Value::Object(map) = fields else {
        return out;
    };
    for (k, v) in map {
        match v {
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    out.push((format!("{k}.{ik}"), masked_value(ik, iv)));
                }
            }
            _ => out.push((k.clone(), masked_value(k, v))),
        }
    }
    out
}

fn masked_value(key: &str, v: &Value) -> String {
    let lower = key.to_ascii_lowercase();
    let secret = SECRET_FIELDS
        .iter()
        .any(|s| lower == s.to_ascii_lowercase())
        || lower.contains("secret")
        || lower.contains("password")
        || lower.contains("token")
        || lower == "authorization";
    if secret && !v.is_null() {
        return "***".into();
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_the_contract_parses() {
        let doc = r#"{"time":"2026-11-25T13:00:00.123Z","uptimeSeconds":12.5,"gateway":"h:9556",
          "configVersion":7,"ready":true,"draining":false,
          "ingest":{"requests":{"http1":{"204":10,"400":1},"h2":{},"h3":{}},"samples":123456,
                    "series":1234,"bytes":999999,"inFlightBytes":0,"memoryBudgetBytes":536870912},
          "drops":{"unattributed":0,"filtered":3},"out":{"samples":123000,"bytes":800000},
          "targets":[{"id":"t-1","endpoint":"https://p/api/v1/write","state":"healthy","paused":false,
             "queueBytes":0,"failures":{"503":2,"timeout":1},"lastError":null,
             "latencyMs":{"p50":3.1,"p90":5.0,"p99":9.7,"max":12.0},
             "feeds":[{"exportId":"prom-dev","deploymentId":"dep-1","clusterId":"c"}],"extra":1}],
          "recentErrors":[{"time":"2026-11-25T12:59:59Z","targetId":"t-1","status":503,"message":"down"}]}"#;
        let s: Snapshot = parse("stats", doc.as_bytes()).unwrap();
        assert_eq!(s.ingest.responses(), (11.0, 1.0));
        assert_eq!(s.targets[0].failures_total(), 3.0);
        assert!(s.targets[0].last_error.is_none());
        assert_eq!(s.recent_errors[0].status, Some(503.0));
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        let e = parse::<Snapshot>("stats", b"{\"targets\": 3}").unwrap_err();
        assert!(e.starts_with("unreadable stats"), "{e}");
        assert!(parse::<Snapshot>("stats", b"\xff").is_err());
    }

    #[test]
    fn secrets_are_masked_whatever_the_gateway_sends() {
        let v: Value = serde_json::json!({"endpoint": "http://x", "password": "hunter2",
            "basicToken": "abc", "headers": {"X-Api-Token": "zzz", "X-Scope-OrgID": "a"}});
        let lines = field_lines(&v);
        let text = format!("{lines:?}");
        assert!(!text.contains("hunter2") && !text.contains("abc") && !text.contains("zzz"));
        assert!(text.contains("team") || text.contains("\"a\""));
    }

    #[test]
    fn override_fields_are_dotted() {
        let l = Link {
            overrides: serde_json::json!({"metricsExport": {"endpoint": "e",
                "headers": {"X-Debug": "1"}, "unsetFields": ["password"]}}),
            ..Link::default()
        };
        assert_eq!(l.override_fields(), vec!["endpoint", "headers.X-Debug"]);
    }
}
