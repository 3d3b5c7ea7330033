//! The resolver: which exports a Deployment receives, their effective fields,
//! and the target identity they share (SPEC §3, §4). Plain code, no IO.
//!
//! # Selection
//! A Deployment D of Workspace W receives every DEPLOYMENT-scope export whose
//! `scopeEntityId` is D, and, when D is HOSTED, every WORKSPACE-scope export of
//! W that links D, or that has `autoLinkDeployments` and does not exclude D.
//!
//! # Merge
//! The effective fields are the export's fields with D's link override applied
//! field by field; `headers` (case-insensitive names) and `labels` merge key by
//! key and `delivery` field by field, the override winning. Defaults are applied
//! after the merge ([`compile`]), so a field set to its default and a field left
//! out give the same target.
//!
//! # Target identity
//! A [`TargetId`] is the first 128 bits of SHA-256 over a length-prefixed
//! canonical encoding of the compiled [`TargetConfig`] (endpoint, auth including
//! secrets, headers, labels, delivery options), keyed with the store's random
//! salt. The salt is stable per store, so ids are stable across restarts and
//! equal across a fleet, and an id cannot be used to guess a secret offline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fanout_proto::units::parse_duration;

use sha2::{Digest, Sha256};

use super::model::{
    AuthType, ByteSize, DeliveryFields, Deployment, DeploymentType, ExportFields, Link,
    MetricsExport, Protocol, Registry, Scope, Secret, ALWAYS_SECRET_HEADERS,
};
use super::secrets::mask_endpoint;

/// The nine labels Fanout stamps; a target's `labels` may not set them.
pub const METADATA_LABELS: [&str; 9] = [
    "cloud_provider",
    "cloud_region",
    "cluster_organization_id",
    "container",
    "namespace",
    "pod",
    "deploymentId",
    "organizationId",
    "workspaceId",
];

/// Headers that Fanout sets itself and a target's `headers` may not.
pub const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "content-encoding",
    "x-prometheus-remote-write-version",
    "user-agent",
];

/// Stable identity of a delivery target (hex, reveals nothing of its config).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub String);

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for TargetId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Authentication towards a target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Auth {
    /// None.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// AWS signature v4.
    Sigv4 {
        /// AWS region.
        region: String,
        /// Access key id (absent: the environment's credentials).
        access_key: Option<String>,
        /// Secret access key.
        secret_key: Option<Secret>,
        /// Role to assume.
        role_arn: Option<String>,
    },
}

/// Delivery options with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryOptions {
    /// Samples per request.
    pub max_samples_per_send: u32,
    /// Send a partial batch after this long.
    pub batch_send_deadline: Duration,
    /// Requests in flight at most.
    pub max_concurrency: u32,
    /// Request timeout.
    pub timeout: Duration,
    /// Longest retry backoff.
    pub max_backoff: Duration,
    /// Disk spill budget in bytes.
    pub disk_budget: u64,
    /// Remote-write version.
    pub protocol: Protocol,
    /// HTTP/2 (ALPN `h2` over TLS, prior knowledge over plain TCP).
    pub http2: bool,
    /// Most compressed bytes in one request (`None`: no cap).
    pub max_bytes_per_send: Option<u64>,
    /// Forward metric family metadata.
    pub send_metadata: bool,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            max_samples_per_send: 2000,
            batch_send_deadline: Duration::from_secs(1),
            max_concurrency: 16,
            timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
            disk_budget: 1 << 30,
            protocol: Protocol::V1,
            http2: false,
            max_bytes_per_send: None,
            send_metadata: true,
        }
    }
}

/// Everything that makes a delivery target; equal configs share one target.
/// `Debug` shows the endpoint with its query values masked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TargetConfig {
    /// Remote-write URL (never carries credentials: validation refuses them).
    pub endpoint: String,
    /// Authentication.
    pub auth: Auth,
    /// Extra headers, names lower-cased; the values are secrets.
    pub headers: BTreeMap<String, Secret>,
    /// Labels added to every series.
    pub labels: BTreeMap<String, String>,
    /// Delivery options.
    pub delivery: DeliveryOptions,
}

impl fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetConfig")
            .field("endpoint", &mask_endpoint(&self.endpoint))
            .field("auth", &self.auth)
            .field("headers", &self.headers)
            .field("labels", &self.labels)
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl TargetConfig {
    /// The target id of this config under `salt`.
    pub fn id(&self, salt: &[u8]) -> TargetId {
        let mut h = Sha256::new();
        let mut put = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        put(b"fanout-target-v1");
        put(salt);
        put(self.endpoint.as_bytes());
        match &self.auth {
            Auth::None => put(b"none"),
            Auth::Bearer { token } => {
                put(b"bearer");
                put(token.expose().as_bytes());
            }
            Auth::Basic { username, password } => {
                put(b"basic");
                put(username.as_bytes());
                put(password.expose().as_bytes());
            }
            Auth::Sigv4 {
                region,
                access_key,
                secret_key,
                role_arn,
            } => {
                put(b"sigv4");
                put(region.as_bytes());
                put(access_key.as_deref().unwrap_or("").as_bytes());
                put(secret_key.as_ref().map_or("", Secret::expose).as_bytes());
                put(role_arn.as_deref().unwrap_or("").as_bytes());
            }
        }
        put(&(self.headers.len() as u64).to_le_bytes());
        for (k, v) in &self.headers {
            put(k.as_bytes());
            put(v.expose().as_bytes());
        }
        put(&(self.labels.len() as u64).to_le_bytes());
        for (k, v) in &self.labels {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        let d = &self.delivery;
        put(&u64::from(d.max_samples_per_send).to_le_bytes());
        put(&d.batch_send_deadline.as_nanos().to_le_bytes());
        put(&u64::from(d.max_concurrency).to_le_bytes());
        put(&d.timeout.as_nanos().to_le_bytes());
        put(&d.max_backoff.as_nanos().to_le_bytes());
        put(&d.disk_budget.to_le_bytes());
        put(match d.protocol {
            Protocol::V1 => b"v1",
            Protocol::V2 => b"v2",
        });
        // Only when set, so that ids from before the option stay the same.
        if d.http2 {
            put(b"h2");
        }
        if let Some(max) = d.max_bytes_per_send {
            put(b"max-bytes");
            put(&max.to_le_bytes());
        }
        if !d.send_metadata {
            put(b"no-metadata");
        }
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        TargetId(hex)
    }
}

/// One export as a Deployment receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveExport {
    /// The export's id.
    pub export_id: String,
    /// The export's objectKey.
    pub object_key: String,
    /// Where the export is attached.
    pub source_scope: Scope,
    /// The Workspace or Deployment it is attached to.
    pub source_scope_entity_id: String,
    /// The merged fields, before defaults (what the admin API shows, masked).
    pub fields: ExportFields,
    /// The compiled target config.
    pub config: TargetConfig,
    /// The target it delivers to.
    pub target_id: TargetId,
}

/// The exports `deployment_id` receives, with overrides applied, in export-id order.
///
/// Exports whose merged fields do not compile are left out; a validated
/// registry has none. A scan of every export: to resolve every Deployment,
/// use an [`ExportIndex`].
pub fn effective_exports(
    registry: &Registry,
    deployment_id: &str,
    salt: &[u8],
) -> Vec<EffectiveExport> {
    let Some(deployment) = registry.deployments.get(deployment_id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for export in registry.metrics_exports.values() {
        let Some(overrides) = selects(
            export,
            deployment,
            || {
                export
                    .links
                    .iter()
                    .find(|l| l.scope_entity_id == deployment_id)
            },
            || {
                export
                    .exclude_links
                    .iter()
                    .any(|l| l.scope_entity_id == deployment_id)
            },
        ) else {
            continue;
        };
        let fields = match overrides {
            Some(ov) => merge(&export.metrics_export, ov),
            None => export.metrics_export.clone(),
        };
        let Ok(config) = compile(&fields) else {
            continue;
        };
        let target_id = config.id(salt);
        out.push(EffectiveExport {
            export_id: export.id.clone(),
            object_key: export.object_key.clone(),
            source_scope: export.scope,
            source_scope_entity_id: export.scope_entity_id.clone(),
            fields,
            config,
            target_id,
        });
    }
    out
}

/// Whether `export` reaches `deployment`; `Some(override)` if it does.
/// `link` finds the export's link of the Deployment, `excluded` whether
/// the export excludes it (a scan, or an [`ExportIndex`] lookup).
fn selects<'a>(
    export: &'a MetricsExport,
    deployment: &Deployment,
    link: impl FnOnce() -> Option<&'a Link>,
    excluded: impl FnOnce() -> bool,
) -> Option<Option<&'a ExportFields>> {
    match export.scope {
        Scope::Deployment => (export.scope_entity_id == deployment.id).then_some(None),
        Scope::Workspace => {
            if export.scope_entity_id != deployment.workspace_id
                || deployment.kind == DeploymentType::Hybrid
            {
                return None;
            }
            if let Some(link) = link() {
                return Some(link.overrides.as_ref().map(|o| &o.metrics_export));
            }
            (export.auto_link_deployments && !excluded()).then_some(None)
        }
    }
}

/// A compiled target config and its id.
#[derive(Debug)]
pub struct Compiled {
    /// The config, defaults applied.
    pub config: TargetConfig,
    /// Its id under the registry's salt.
    pub target_id: TargetId,
}

impl Compiled {
    fn of(fields: &ExportFields, salt: &[u8]) -> Option<Arc<Compiled>> {
        let config = compile(fields).ok()?;
        let target_id = config.id(salt);
        Some(Arc::new(Compiled { config, target_id }))
    }
}

/// Which exports reach which Deployments, indexed once to resolve every
/// Deployment of a registry ([`ExportIndex::reached`]): a Deployment costs
/// its own exports and link lookups, not a scan of every export and every
/// link (with 10,000 Deployment exports plus a Workspace export linking all
/// 10,000 Deployments, the scans took 0.8 s per registry change). An
/// export without an override is compiled once, not once per Deployment.
pub struct ExportIndex<'a> {
    salt: &'a [u8],
    /// DEPLOYMENT-scope exports by Deployment id.
    by_deployment: HashMap<&'a str, Vec<&'a MetricsExport>>,
    /// WORKSPACE-scope exports by Workspace id.
    by_workspace: HashMap<&'a str, Vec<WorkspaceExport<'a>>>,
    /// Each export compiled without an override, made at first use.
    plain: HashMap<&'a str, Option<Arc<Compiled>>>,
}

/// A WORKSPACE-scope export with its links and exclusions by Deployment.
struct WorkspaceExport<'a> {
    export: &'a MetricsExport,
    links: HashMap<&'a str, &'a Link>,
    excluded: HashSet<&'a str>,
}

impl<'a> ExportIndex<'a> {
    /// Indexes the exports of `registry`; `salt` keys the target ids.
    pub fn new(registry: &'a Registry, salt: &'a [u8]) -> ExportIndex<'a> {
        let mut by_deployment: HashMap<&str, Vec<&MetricsExport>> = HashMap::new();
        let mut by_workspace: HashMap<&str, Vec<WorkspaceExport>> = HashMap::new();
        for e in registry.metrics_exports.values() {
            match e.scope {
                Scope::Deployment => by_deployment.entry(&e.scope_entity_id).or_default().push(e),
                Scope::Workspace => {
                    by_workspace
                        .entry(&e.scope_entity_id)
                        .or_default()
                        .push(WorkspaceExport {
                            export: e,
                            links: e
                                .links
                                .iter()
                                .map(|l| (l.scope_entity_id.as_str(), l))
                                .collect(),
                            excluded: e
                                .exclude_links
                                .iter()
                                .map(|l| l.scope_entity_id.as_str())
                                .collect(),
                        })
                }
            }
        }
        ExportIndex {
            salt,
            by_deployment,
            by_workspace,
            plain: HashMap::new(),
        }
    }

    /// The exports `deployment` receives, in export-id order, each with its
    /// compiled target (overrides applied): what [`effective_exports`]
    /// finds, without the fields. Exports that do not compile are left out.
    pub fn reached(&mut self, deployment: &Deployment) -> Vec<(&'a str, Arc<Compiled>)> {
        let direct = self
            .by_deployment
            .get(deployment.id.as_str())
            .into_iter()
            .flatten()
            .map(|&e| (e, None));
        let shared = self
            .by_workspace
            .get(deployment.workspace_id.as_str())
            .into_iter()
            .flatten()
            .map(|w| (w.export, Some(w)));
        let mut candidates: Vec<(&'a MetricsExport, Option<&WorkspaceExport<'a>>)> =
            direct.chain(shared).collect();
        candidates.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut out = Vec::with_capacity(candidates.len());
        for (export, w) in candidates {
            let id = deployment.id.as_str();
            let Some(overrides) = selects(
                export,
                deployment,
                || w.and_then(|w| w.links.get(id).copied()),
                || w.is_some_and(|w| w.excluded.contains(id)),
            ) else {
                continue;
            };
            let compiled = match overrides {
                Some(ov) => Compiled::of(&merge(&export.metrics_export, ov), self.salt),
                None => self
                    .plain
                    .entry(&export.id)
                    .or_insert_with(|| Compiled::of(&export.metrics_export, self.salt))
                    .clone(),
            };
            if let Some(c) = compiled {
                out.push((export.id.as_str(), c));
            }
        }
        out
    }
}

/// The export's fields with an override applied field by field.
pub fn merge(base: &ExportFields, ov: &ExportFields) -> ExportFields {
    let mut headers = base.headers.clone();
    for (k, v) in &ov.headers {
        headers.retain(|bk, _| !bk.eq_ignore_ascii_case(k));
        headers.insert(k.clone(), v.clone());
    }
    let mut labels = base.labels.clone();
    labels.extend(ov.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut public_headers = base.public_headers.clone();
    for name in &ov.public_headers {
        if !public_headers.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            public_headers.push(name.clone());
        }
    }
    let delivery = match (&base.delivery, &ov.delivery) {
        (None, None) => None,
        (Some(d), None) | (None, Some(d)) => Some(d.clone()),
        (Some(b), Some(o)) => Some(DeliveryFields {
            max_samples_per_send: o.max_samples_per_send.or(b.max_samples_per_send),
            batch_send_deadline: o
                .batch_send_deadline
                .clone()
                .or_else(|| b.batch_send_deadline.clone()),
            max_concurrency: o.max_concurrency.or(b.max_concurrency),
            timeout: o.timeout.clone().or_else(|| b.timeout.clone()),
            max_backoff: o.max_backoff.clone().or_else(|| b.max_backoff.clone()),
            disk_budget: o.disk_budget.clone().or_else(|| b.disk_budget.clone()),
            protocol: o.protocol.or(b.protocol),
            http2: o.http2.or(b.http2),
            send_metadata: o.send_metadata.or(b.send_metadata),
            max_bytes_per_send: o
                .max_bytes_per_send
                .clone()
                .or_else(|| b.max_bytes_per_send.clone()),
        }),
    };
    ExportFields {
        endpoint: ov.endpoint.clone().or_else(|| base.endpoint.clone()),
        exporter_type: ov.exporter_type.or(base.exporter_type),
        auth_type: ov.auth_type.or(base.auth_type),
        basic_token: ov.basic_token.clone().or_else(|| base.basic_token.clone()),
        username: ov.username.clone().or_else(|| base.username.clone()),
        password: ov.password.clone().or_else(|| base.password.clone()),
        sigv4_region: ov
            .sigv4_region
            .clone()
            .or_else(|| base.sigv4_region.clone()),
        sigv4_access_key: ov
            .sigv4_access_key
            .clone()
            .or_else(|| base.sigv4_access_key.clone()),
        sigv4_secret_key: ov
            .sigv4_secret_key
            .clone()
            .or_else(|| base.sigv4_secret_key.clone()),
        sigv4_role_arn: ov
            .sigv4_role_arn
            .clone()
            .or_else(|| base.sigv4_role_arn.clone()),
        headers,
        public_headers,
        labels,
        delivery,
        unset_fields: Vec::new(),
    }
}

/// Compiles merged fields into a target config, listing every problem.
///
/// Problems name the field (`endpoint: ...`); the caller prefixes where.
/// No problem text contains a secret value.
pub fn compile(fields: &ExportFields) -> Result<TargetConfig, Vec<String>> {
    let mut problems = Vec::new();
    let endpoint = match fields.endpoint.as_deref() {
        None | Some("") => {
            problems.push("endpoint: required".to_owned());
            String::new()
        }
        Some(e) => {
            if let Err(p) = check_endpoint(e) {
                problems.push(format!("endpoint: {p}"));
            }
            e.to_owned()
        }
    };
    let auth = match fields.auth_type {
        None | Some(AuthType::None) => Auth::None,
        Some(AuthType::AuthToken) => match &fields.basic_token {
            Some(t) if !t.is_empty() => Auth::Bearer { token: t.clone() },
            _ => {
                problems.push("basicToken: required by authType AUTH_TOKEN".into());
                Auth::None
            }
        },
        Some(AuthType::Basic) => {
            let username = fields.username.clone().unwrap_or_default();
            if username.is_empty() {
                problems.push("username: required by authType BASIC".into());
            }
            let password = fields.password.clone().unwrap_or_default();
            if password.is_empty() {
                problems.push("password: required by authType BASIC".into());
            }
            Auth::Basic { username, password }
        }
        Some(AuthType::Sigv4) => {
            let region = fields.sigv4_region.clone().unwrap_or_default();
            if region.is_empty() {
                problems.push("sigv4Region: required by authType SIGV4".into());
            }
            if fields
                .sigv4_role_arn
                .as_deref()
                .is_some_and(|r| !r.is_empty())
            {
                // Never silently ignored: requests would be signed with other
                // credentials than the user asked for.
                problems.push(
                    "sigv4RoleArn: assuming a role is not supported yet; give sigv4AccessKey and sigv4SecretKey, or neither to use the environment's AWS credentials".into(),
                );
            }
            if fields.sigv4_access_key.is_some() != fields.sigv4_secret_key.is_some() {
                problems.push(
                    "sigv4AccessKey and sigv4SecretKey: set both or neither (neither uses the environment's credentials)".into(),
                );
            }
            Auth::Sigv4 {
                region,
                access_key: fields.sigv4_access_key.clone(),
                secret_key: fields.sigv4_secret_key.clone(),
                role_arn: fields.sigv4_role_arn.clone(),
            }
        }
    };
    let mut headers = BTreeMap::new();
    for (name, value) in &fields.headers {
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            problems.push(format!(
                "headers: {name} is set by Fanout and cannot be set"
            ));
        } else if lower == "authorization" && !matches!(auth, Auth::None) {
            problems.push("headers: Authorization conflicts with authType".into());
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!("headers: {name:?} is not a valid header name"));
        } else if http::HeaderValue::from_str(value.expose()).is_err() {
            problems.push(format!(
                "headers: {name}: value is not a valid header value"
            ));
        }
        headers.insert(lower, value.clone());
    }
    for name in &fields.public_headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!(
                "publicHeaders: {name:?} is not a valid header name"
            ));
        } else if ALWAYS_SECRET_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            problems.push(format!(
                "publicHeaders: {name} is always a secret and cannot be public"
            ));
        }
    }
    for name in fields.labels.keys() {
        if METADATA_LABELS.contains(&name.as_str()) {
            problems.push(format!(
                "labels: {name} is a metadata label that Fanout sets and cannot be set"
            ));
        } else if !valid_label_name(name) {
            problems.push(format!(
                "labels: {name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
            ));
        }
    }
    let delivery = compile_delivery(fields.delivery.as_ref(), &mut problems);
    if problems.is_empty() {
        Ok(TargetConfig {
            endpoint,
            auth,
            headers,
            labels: fields.labels.clone(),
            delivery,
        })
    } else {
        Err(problems)
    }
}

fn compile_delivery(
    fields: Option<&DeliveryFields>,
    problems: &mut Vec<String>,
) -> DeliveryOptions {
    let mut d = DeliveryOptions::default();
    let Some(f) = fields else {
        return d;
    };
    if let Some(n) = f.max_samples_per_send {
        match u32::try_from(n) {
            Ok(n) if n > 0 => d.max_samples_per_send = n,
            _ => problems.push(format!(
                "delivery.maxSamplesPerSend: {n} is out of range (1 to {})",
                u32::MAX
            )),
        }
    }
    if let Some(n) = f.max_concurrency {
        match u32::try_from(n) {
            Ok(n) if (1..=1024).contains(&n) => d.max_concurrency = n,
            _ => problems.push(format!(
                "delivery.maxConcurrency: {n} is out of range (1 to 1024)"
            )),
        }
    }
    let durations = [
        (
            "batchSendDeadline",
            &f.batch_send_deadline,
            &mut d.batch_send_deadline,
        ),
        ("timeout", &f.timeout, &mut d.timeout),
        ("maxBackoff", &f.max_backoff, &mut d.max_backoff),
    ];
    for (name, text, slot) in durations {
        if let Some(text) = text {
            match parse_duration(text) {
                Ok(v) if !v.is_zero() => *slot = v,
                Ok(_) => problems.push(format!("delivery.{name}: must be greater than zero")),
                Err(e) => problems.push(format!("delivery.{name}: {e}")),
            }
        }
    }
    if let Some(size) = &f.disk_budget {
        match parse_size(size) {
            Ok(v) => d.disk_budget = v,
            Err(e) => problems.push(format!("delivery.diskBudget: {e}")),
        }
    }
    if let Some(h2) = f.http2 {
        d.http2 = h2;
    }
    if let Some(send) = f.send_metadata {
        d.send_metadata = send;
    }
    if let Some(size) = &f.max_bytes_per_send {
        match parse_size(size) {
            Ok(v) if v >= MIN_BYTES_PER_SEND => d.max_bytes_per_send = Some(v),
            Ok(v) => problems.push(format!(
                "delivery.maxBytesPerSend: {v} bytes is too small (at least {MIN_BYTES_PER_SEND})"
            )),
            Err(e) => problems.push(format!("delivery.maxBytesPerSend: {e}")),
        }
    }
    if let Some(p) = f.protocol {
        d.protocol = p;
    }
    d
}

/// The smallest `maxBytesPerSend`: one series must still fit.
const MIN_BYTES_PER_SEND: u64 = 1024;

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|_| "not a valid URL".to_owned())?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host".into());
    };
    if authority.as_str().contains('@') {
        // Credentials in the URL would end up in logs and target listings.
        return Err("must not contain credentials; use authType BASIC or AUTH_TOKEN".into());
    }
    Ok(())
}

/// Whether `name` is a Prometheus label name that users may set.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__")
}

/// Parses a size: bytes, or text in the grammar of [`fanout_proto::units`].
pub fn parse_size(size: &ByteSize) -> Result<u64, String> {
    match size {
        ByteSize::Bytes(n) => Ok(*n),
        ByteSize::Text(t) => fanout_proto::units::parse_size(t),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_size(&ByteSize::Text("64MiB".into())), Ok(64 << 20));
        assert_eq!(parse_size(&ByteSize::Bytes(7)), Ok(7));
        assert!(parse_size(&ByteSize::Text("1 parsec".into())).is_err());
    }

    #[test]
    fn defaults_give_the_same_target_as_explicit_defaults() {
        let mut a = ExportFields {
            endpoint: Some("http://127.0.0.1:9/api/v1/write".into()),
            ..Default::default()
        };
        let id_a = compile(&a).unwrap().id(b"salt");
        a.delivery = Some(DeliveryFields {
            max_samples_per_send: Some(2000),
            timeout: Some("30s".into()),
            disk_budget: Some(ByteSize::Text("1GiB".into())),
            ..Default::default()
        });
        assert_eq!(compile(&a).unwrap().id(b"salt"), id_a);
        assert_ne!(compile(&a).unwrap().id(b"other salt"), id_a);
    }

    #[test]
    fn secrets_change_the_id_but_never_show_in_it_or_in_debug() {
        let fields = |token: &str| ExportFields {
            endpoint: Some("http://127.0.0.1:9/api/v1/write".into()),
            auth_type: Some(AuthType::AuthToken),
            basic_token: Some(Secret::new(token)),
            ..Default::default()
        };
        let a = compile(&fields("s3cr3t-token")).unwrap();
        let b = compile(&fields("other-token")).unwrap();
        assert_ne!(a.id(b"x"), b.id(b"x"));
        assert!(!a.id(b"x").0.contains("s3cr3t"));
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }
}
