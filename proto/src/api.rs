//! The admin API's JSON shapes, shared by the gateway (which serializes
//! them) and the console (which reads them): `/api/v1/stats` and its SSE
//! stream, `/api/v1/targets`, a Deployment's effective exports, the
//! registry as read back, errors.
//!
//! One definition per shape, so a field renamed here is renamed on both
//! sides, and a field removed fails to compile wherever it was used. The
//! gateway's OpenAPI document is checked against these types by a test
//! (`gateway/src/admin/openapi.rs`).
//!
//! Reading is lenient, for a console one version ahead of or behind its
//! gateway: every field has a default when missing (`#[serde(default)]`)
//! and unknown fields are ignored. Counters are integers; ages, rates and
//! latencies are floating point.
//!
//! The registry objects here are the *read* view (secrets masked, export
//! fields left as JSON): the gateway's own model, which validates what is
//! written, is stricter and lives with the registry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"items": [...]}`: every list the admin API answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Items<T> {
    /// The listed things.
    pub items: Vec<T>,
    /// With `?limit=`: the `after` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// An error answer: what went wrong and, for a rejected document, every
/// problem found in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Each problem, with where it is.
    pub problems: Vec<String>,
}

/// One stats snapshot (`GET /api/v1/stats`, and each `stats` event of
/// `GET /api/v1/stats/stream`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Snapshot {
    /// When the gateway took it (RFC 3339, milliseconds).
    pub time: String,
    /// Seconds since the gateway started.
    pub uptime_seconds: f64,
    /// The gateway's name (`host:port` of its admin API).
    pub gateway: String,
    /// Registry version in force.
    pub config_version: u64,
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// The gateway is draining (SIGTERM).
    pub draining: bool,
    /// Whether the registry store answers (`false`: the gateway forwards
    /// with the registry it has, or its last known one; admin writes get
    /// 503). Absent from gateways that do not report it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_reachable: Option<bool>,
    /// Ingest counters.
    pub ingest: Ingest,
    /// Dropped samples by reason (`unattributed`, `foreign`, `filtered`,
    /// `queue_full`, `disk_full`, `rejected`).
    pub drops: BTreeMap<String, u64>,
    /// Delivered to targets.
    pub out: Counters,
    /// Disk backlogs of targets no longer in the registry.
    pub orphan_backlogs: Vec<OrphanBacklog>,
    /// Every target.
    pub targets: Vec<Target>,
    /// The latest delivery errors, newest first.
    pub recent_errors: Vec<RecentError>,
    /// Every Deployment with exports: how its exports go on this gateway.
    pub deployments: Vec<DeploymentStat>,
}

/// One Deployment's exports on one gateway, for the console's Deployments
/// view (the whole story per export is in
/// `GET /api/v1/deployments/{id}/metrics-exports`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentStat {
    /// Deployment id.
    pub id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Its effective exports (targets).
    pub exports: u32,
    /// The worst state of its exports (`failing`, `retrying`, `paused`,
    /// `delivering`, `waiting`).
    pub state: String,
    /// Its samples delivered in the last minute, over its exports.
    pub samples_delivered_1m: u64,
    /// Its samples dropped in the last minute, by reason, over its exports.
    pub samples_dropped_1m: BTreeMap<String, u64>,
    /// The oldest undelivered data of its targets.
    pub oldest_undelivered_seconds: f64,
    /// The newest error of its targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
}

/// Ingest counters of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Ingest {
    /// Responses by transport (`http1`, `h2`, `h3`) and status code.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Samples accepted.
    pub samples: u64,
    /// Series accepted.
    pub series: u64,
    /// Request bytes received.
    pub bytes: u64,
    /// Bytes of the memory budget in use.
    pub in_flight_bytes: u64,
    /// The memory budget.
    pub memory_budget_bytes: u64,
}

impl Ingest {
    /// Total responses and those that were not 2xx.
    pub fn responses(&self) -> (u64, u64) {
        let mut total = 0;
        let mut errors = 0;
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Counters {
    /// Samples.
    pub samples: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A disk backlog whose target left the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OrphanBacklog {
    /// The target it was spilled for.
    pub target_id: String,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Seconds since it became an orphan.
    pub age_seconds: f64,
    /// Seconds until it is deleted (`--spill-retention`).
    pub delete_in_seconds: f64,
}

/// One delivery target (an item of `GET /api/v1/targets`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Target {
    /// Target id (never a URL).
    pub id: String,
    /// Endpoint without userinfo and query.
    pub endpoint: String,
    /// The remote-write version it is sent: `V1`, `V2`, or
    /// `V1 (fallback: <reason>)` for a `protocol: V2` target whose receiver
    /// does not speak 2.0 (2.0 is tried again after 10 minutes).
    pub protocol: String,
    /// `healthy`, `retrying`, `failing` or `paused`.
    pub state: String,
    /// Paused by an operator.
    pub paused: bool,
    /// Bytes queued in memory.
    pub queue_bytes: u64,
    /// Samples queued in memory.
    pub queue_samples: u64,
    /// Bytes in the disk spill.
    pub spill_bytes: u64,
    /// The disk spill: `off`, `ok`, `broken` or `disk_full`.
    pub spill_state: String,
    /// Age of the oldest undelivered data, memory or disk.
    pub oldest_queued_seconds: f64,
    /// Samples delivered.
    pub samples_sent: u64,
    /// Bytes delivered (compressed, as sent).
    pub bytes_sent: u64,
    /// Requests that succeeded.
    pub requests_sent: u64,
    /// Attempts sent again.
    pub retries: u64,
    /// Recovery probes sent while failing (empty writes; docs/delivery.md).
    pub probes: u64,
    /// Failed attempts by status or kind (`503`, `timeout`, `connect`).
    pub failures: BTreeMap<String, u64>,
    /// Dropped samples by reason (`rejected`, `queue_full`, `disk_full`).
    pub dropped: BTreeMap<String, u64>,
    /// The last error, if any.
    pub last_error: Option<LastError>,
    /// Current concurrency limit.
    pub concurrency: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Request latency percentiles.
    pub latency_ms: Latency,
    /// The (export, Deployment) pairs that route to it.
    pub feeds: Vec<Feed>,
}

impl Target {
    /// All failed attempts.
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// A target's last error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LastError {
    /// When (RFC 3339).
    pub time: String,
    /// HTTP status, absent for connection errors and timeouts.
    pub status: Option<u16>,
    /// What happened (status line and start of the body, or the error; no
    /// secrets).
    pub message: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Feed {
    /// Metrics export id.
    pub export_id: String,
    /// Deployment id.
    pub deployment_id: String,
    /// The Deployment's cluster id.
    pub cluster_id: String,
}

/// A delivery error of the `recentErrors` list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RecentError {
    /// When (RFC 3339).
    pub time: String,
    /// Target id.
    pub target_id: String,
    /// HTTP status, absent for connection errors and timeouts.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
}

/// The last event of `GET /api/v1/stats/stream` (event name `stopped`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stopped {
    /// Why the stream ends.
    pub reason: String,
}

/// One effective export of a Deployment (an item of
/// `GET /api/v1/deployments/{id}/metrics-exports`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The merged fields (overrides applied), secrets masked.
    pub metrics_export: Value,
    /// Secret fields that are set.
    pub set_fields: Vec<String>,
    /// How its delivery is going for this Deployment (absent where the
    /// gateway has no delivery, as in tests of the registry alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ExportStatus>,
}

/// How one export is going for one Deployment, on this gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportStatus {
    /// `delivering` (its samples arrive), `waiting` (none of its samples
    /// came yet), `retrying`, `failing` or `paused` (the target's state).
    pub state: String,
    /// When a batch with its samples was last delivered (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    /// The target's last error (shared by every Deployment it carries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// Its samples delivered in the last minute.
    pub samples_delivered_1m: u64,
    /// Its samples dropped in the last minute, by reason.
    pub samples_dropped_1m: BTreeMap<String, u64>,
    /// Its samples delivered since the gateway started (from memory; what
    /// went through the disk spill is in `samplesSpilled`).
    pub samples_delivered: u64,
    /// Its samples dropped since the gateway started, by reason.
    pub samples_dropped: BTreeMap<String, u64>,
    /// Its samples that went to the target's disk spill.
    pub samples_spilled: u64,
    /// Age of the target's oldest undelivered data (shared by all it carries).
    pub oldest_undelivered_seconds: f64,
    /// The gateways whose reports this is, and when each reported (with a
    /// shared store, every gateway of the fleet that reported recently).
    pub gateways: Vec<GatewayReport>,
}

/// One gateway's part of a status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayReport {
    /// The gateway (`host:admin-port`).
    pub gateway: String,
    /// When its report was made (RFC 3339).
    pub reported_at: String,
}

/// What people call a target, in the console and in the gateway's log: the
/// exports that route to it (sorted, comma-separated) and how many
/// Deployments they carry, from its (export, Deployment) pairs; `None` when
/// nothing routes to it (a target being retired: its id names it then).
pub fn target_name<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<(String, usize)> {
    let mut exports = std::collections::BTreeSet::new();
    let mut deployments = std::collections::BTreeSet::new();
    for (export, deployment) in routes {
        exports.insert(export);
        deployments.insert(deployment);
    }
    if exports.is_empty() {
        return None;
    }
    Some((
        exports.into_iter().collect::<Vec<_>>().join(","),
        deployments.len(),
    ))
}

/// [`target_name`] as one string, `dev-prom ·2`.
pub fn target_label<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    target_name(routes).map(|(exports, n)| format!("{exports} ·{n}"))
}

/// How bad an export state is (`failing` > `retrying` > `paused` >
/// `delivering` > `waiting`), for the worst of several: what the gateway
/// merges over targets and gateways, and the console over gateways.
pub fn export_state_rank(state: &str) -> u8 {
    match state {
        "failing" => 4,
        "retrying" => 3,
        "paused" => 2,
        "delivering" => 1,
        _ => 0,
    }
}

impl ExportStatus {
    /// Adds `other` (the same pair on another gateway, or another export of
    /// the same Deployment): the worst state, the latest success, the newest
    /// error and the oldest data win; counts add up. `gateways` is the
    /// caller's.
    pub fn absorb(&mut self, other: &ExportStatus) {
        if export_state_rank(&other.state) > export_state_rank(&self.state) {
            self.state.clone_from(&other.state);
        }
        if other.last_success_at > self.last_success_at {
            self.last_success_at.clone_from(&other.last_success_at);
        }
        // The gateway writes every time in one RFC 3339 form: text order is
        // time order.
        let newer = match (&self.last_error, &other.last_error) {
            (Some(a), Some(b)) => b.time > a.time,
            (None, b) => b.is_some(),
            (_, None) => false,
        };
        if newer {
            self.last_error.clone_from(&other.last_error);
        }
        self.samples_delivered_1m += other.samples_delivered_1m;
        self.samples_delivered += other.samples_delivered;
        self.samples_spilled += other.samples_spilled;
        for (k, v) in &other.samples_dropped_1m {
            *self.samples_dropped_1m.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.samples_dropped {
            *self.samples_dropped.entry(k.clone()).or_default() += v;
        }
        self.oldest_undelivered_seconds = self
            .oldest_undelivered_seconds
            .max(other.oldest_undelivered_seconds);
    }
}

/// `GET /api/v1/metrics-exports/{id}/status`: the export's status for
/// every Deployment it applies to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportStatuses {
    /// Export id.
    pub id: String,
    /// One per Deployment.
    pub items: Vec<DeploymentExportStatus>,
    /// With `?limit=`: the `after` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One Deployment's side of an export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentExportStatus {
    /// The Deployment.
    pub deployment_id: String,
    /// The target its series go to for this export.
    pub target_id: String,
    /// How it is going.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ExportStatus>,
}

/// The answer to `PUT /api/v1/registry`: the version now in force and what
/// it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Applied {
    /// Registry version.
    pub version: u64,
    /// Clusters.
    pub clusters: u64,
    /// Workspaces.
    pub workspaces: u64,
    /// Deployments.
    pub deployments: u64,
    /// Metrics exports.
    pub metrics_exports: u64,
    /// Delivery targets they resolve to.
    pub targets: u64,
}

impl Applied {
    /// `2 clusters, 1 workspaces, 3 deployments, 3 metrics exports, 3
    /// targets`: how `fanout apply` and `fanout check` say what it holds.
    pub fn counts(&self) -> String {
        format!(
            "{} clusters, {} workspaces, {} deployments, {} metrics exports, {} targets",
            self.clusters, self.workspaces, self.deployments, self.metrics_exports, self.targets
        )
    }
}

/// The answer to `PUT /api/v1/registry?dryRun=true`: what the document
/// would change on the gateway, which changed nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Planned {
    /// The registry version in force (unchanged).
    pub version: u64,
    /// Objects that would be created, as `kind/id`.
    pub created: Vec<String>,
    /// Objects that would change.
    pub changed: Vec<String>,
    /// Objects that would be removed.
    pub removed: Vec<String>,
    /// What the registry would then hold.
    pub would_hold: Applied,
}

/// The registry as read back (`GET /api/v1/registry`), secrets masked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// A cluster as read back (its ingest token is never shown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// `***` when a token is set (the token itself is never read back).
    pub ingest_token: String,
    /// Secret fields that are set (`ingestToken`).
    pub set_fields: Vec<String>,
    /// Its limits, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// `GET /api/v1/deployments/{id}/metrics-exports`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentExports {
    /// The effective exports.
    pub items: Vec<EffectiveExport>,
    /// Its active-series limits, when it or its cluster has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsStatus>,
}

/// The state of a Deployment's limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsStatus {
    /// The Deployment's own `limits.series` (or the gateway's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<SeriesLimitStatus>,
    /// Its cluster's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_series: Option<SeriesLimitStatus>,
}

/// One active-series limit as this gateway holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SeriesLimitStatus {
    /// The limit.
    pub limit: u64,
    /// Series seen in the last 10 minutes.
    pub active: u64,
    /// Samples of new series dropped for the limit since the gateway started.
    pub dropped_samples: u64,
}

/// The limits of a cluster or a Deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    /// Samples per second accepted from a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<u64>,
    /// Active series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<u64>,
}

/// A Workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Its limits, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// A metrics export as read back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Secret fields that are set.
    pub set_fields: Vec<String>,
}

/// A link (or exclusion) of an export to a Deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Link {
    /// `DEPLOYMENT`.
    pub scope: String,
    /// Deployment id.
    pub scope_entity_id: String,
    /// Overrides (`{"metricsExport": {...}, "setFields": [...]}`), if any.
    #[serde(skip_serializing_if = "Value::is_null")]
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

/// An HTTP client for an admin API (`fanout apply`, the console), before
/// the caller's own settings: rustls with the public roots plus the
/// certificates of `ca_cert` (a private CA, or a gateway's self-signed
/// certificate), a 5 s connect timeout and `user_agent`. The error says what
/// is wrong with `--ca-cert`.
#[cfg(feature = "client")]
pub fn admin_client_builder(
    ca_cert: Option<&std::path::Path>,
    user_agent: &str,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(std::time::Duration::from_secs(5))
        .user_agent(user_agent);
    if let Some(path) = ca_cert {
        let bad = |what: String| format!("--ca-cert {}: {what}", path.display());
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// An HTTP client error with its causes, on one line, without the wrappers
/// that only repeat the URL ("error sending request for url (…)", "client
/// error (Connect)"), and a hint for the usual TLS mistakes. Used by the
/// admin API's clients (`fanout apply`, the console).
pub fn client_error(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let t = c.to_string();
        let wrapper = t.starts_with("error sending request") || t.starts_with("client error (");
        if !wrapper && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = c.source();
    }
    let mut s = if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    if s.contains("certificate") {
        s.push_str(" (trust the gateway's certificate or its CA with --ca-cert)");
    } else if s.contains("invalid HTTP version") {
        s.push_str(" (the admin API may be serving HTTPS: use an https:// URL)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_reading_is_lenient_and_writing_is_camel_case() {
        let doc = r#"{"time":"2026-11-25T13:00:00.123Z","configVersion":7,"extra":1,
          "ingest":{"requests":{"http1":{"204":10,"400":1}}},
          "targets":[{"id":"t-1","failures":{"503":2,"timeout":1},"lastError":null,
             "latencyMs":{"p50":3.1}}],
          "recentErrors":[{"targetId":"t-1","status":503,"message":"down"}]}"#;
        let s: Snapshot = serde_json::from_str(doc).unwrap();
        assert_eq!(s.ingest.responses(), (11, 1));
        assert_eq!(s.targets[0].failures_total(), 3);
        assert_eq!(s.recent_errors[0].status, Some(503));
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["configVersion"], 7);
        assert_eq!(back["targets"][0]["latencyMs"]["p50"], 3.1);
        assert!(back["targets"][0].get("queueBytes").is_some());
    }

    #[test]
    fn api_target_names_its_exports_and_counts_deployments() {
        let routes = [("prod", "d1"), ("dev", "d2"), ("dev", "d1")];
        assert_eq!(target_label(routes), Some("dev,prod ·2".to_owned()));
        assert_eq!(target_name([("dev", "d1")]), Some(("dev".to_owned(), 1)));
        assert_eq!(target_label([]), None);
    }

    #[test]
    fn api_override_fields_are_dotted() {
        let l = Link {
            overrides: serde_json::json!({"metricsExport": {"endpoint": "e",
                "headers": {"X-Debug": "1"}, "unsetFields": ["password"]}}),
            ..Link::default()
        };
        assert_eq!(l.override_fields(), vec!["endpoint", "headers.X-Debug"]);
    }
}
