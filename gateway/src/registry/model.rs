//! The registry's objects as users write them (SPEC §3), and the declarative
//! document that holds them.
//!
//! Everything here is data: serde shapes in camelCase, no rules beyond what a
//! type can say. The rules live in [`super::validate`], the merge of overrides
//! in [`super::resolve`].
//!
//! # Secrets
//! `ingestToken`, `basicToken`, `password`, `sigv4SecretKey` and every custom
//! header value are [`Secret`]s. They serialize in clear because the store
//! must keep them, so nothing outside the store may serialize a model object
//! directly: every read goes through [`masked`], which writes `"***"` instead
//! and lists the set secrets in `setFields` (`headers.X-Api-Key` for a
//! header). Headers named in `publicHeaders` (never `Authorization`) are
//! shown. The endpoint's query values are secrets too: reads show
//! `…?api_key=***` ([`super::secrets::mask_endpoint`]). A secret written back
//! as `"***"` means "keep the stored value" ([`restore_secrets`]), and an
//! endpoint equal to the stored one's read form means the stored endpoint,
//! so a read-modify-write round trip never loses one.
//!
//! # `unsetFields`
//! An override may carry `unsetFields` (`"password"`, `"headers.X-Key"`,
//! `"labels.tier"`, `"delivery.timeout"`). [`apply_unset_fields`] removes those
//! fields from the override and drops the list, so it is never stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::secrets::{endpoint_has_mask, mask_endpoint};

/// What every read shows instead of a secret.
pub const MASK: &str = "***";

/// A write-only value: `Debug` masks it and there is no `Display`.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Only a string is a secret. Anything else is refused with an error that
/// never repeats the value: serde's own "invalid type: integer `…`"
/// would echo an unquoted numeric token or password.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const NOT_A_STRING: &str = "a secret must be a string (quote it in YAML)";
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
        }
        // `any`: some deserializers (serde_json's Value) answer a typed
        // request for a string with their own error, value included.
        d.deserialize_any(V)
    }
}

impl Secret {
    /// Wraps a clear value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The clear value, for the store and for the request to an export target only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is the `"***"` placeholder a client sent back from a read.
    pub fn is_mask(&self) -> bool {
        self.0 == MASK
    }

    /// Whether `given` is this secret, compared in constant time
    /// (`subtle`): the time taken says nothing of how much of a guess was
    /// right (only whether its length was).
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// The four kinds of registry object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A Kubernetes cluster that sends remote-write.
    Cluster,
    /// A Workspace: a group of Deployments of one organization.
    Workspace,
    /// An Airflow Deployment.
    Deployment,
    /// A metrics export.
    MetricsExport,
}

impl Kind {
    /// Every kind, in dependency order (referenced kinds first).
    pub const ALL: [Kind; 4] = [
        Kind::Cluster,
        Kind::Workspace,
        Kind::Deployment,
        Kind::MetricsExport,
    ];

    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Workspace => "workspace",
            Kind::Deployment => "deployment",
            Kind::MetricsExport => "metricsExport",
        }
    }

    /// Parses a stored `kind` column.
    pub fn from_str_opt(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The key of this kind in a declarative document.
    pub fn document_key(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::Workspace => "workspaces",
            Kind::Deployment => "deployments",
            Kind::MetricsExport => "metricsExports",
        }
    }
}

/// A cluster: its ingest token authenticates its remote-write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// User-chosen id; the basic-auth user name.
    pub id: String,
    /// The cluster's organization, stamped as `cluster_organization_id`.
    pub organization_id: String,
    /// Stamped as `cloud_provider`.
    pub cloud_provider: String,
    /// Stamped as `cloud_region`.
    pub cloud_region: String,
    /// The bearer token (or basic-auth password) of the cluster's senders.
    pub ingest_token: Secret,
    /// Its limits (unset: the gateway's defaults, `--cluster-samples-per-second`).
    #[serde(default, skip_serializing_if = "Limits::is_unset")]
    pub limits: Limits,
}

/// The limits of a cluster or a Deployment. A cluster over its
/// `samplesPerSecond` gets 429 with `Retry-After` (nothing of the refused
/// request is accepted, so a sender that retries loses nothing); a cluster or
/// Deployment with `series` active series has its *new* series dropped
/// (counted `series_limit`) while the known ones keep flowing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Samples (and histogram samples) per second accepted from a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<u64>,
    /// Active series (seen in the last 10 minutes) delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<u64>,
}

impl Limits {
    /// No limit set.
    pub fn is_unset(&self) -> bool {
        self.samples_per_second.is_none() && self.series.is_none()
    }
}

/// A Workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workspace {
    /// User-chosen id, stamped as `workspaceId`.
    pub id: String,
    /// Stamped as `organizationId` on its Deployments' series.
    pub organization_id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
}

/// Astro Hosted or Hybrid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentType {
    /// Receives Workspace exports and its own.
    Hosted,
    /// Receives its own (DEPLOYMENT-scope) exports only.
    Hybrid,
}

/// A Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    /// User-chosen id, stamped as `deploymentId`.
    pub id: String,
    /// The Workspace it belongs to.
    pub workspace_id: String,
    /// The cluster it runs on.
    pub cluster_id: String,
    /// Its Kubernetes namespace, unique per cluster.
    pub namespace: String,
    /// HOSTED or HYBRID.
    #[serde(rename = "type")]
    pub kind: DeploymentType,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Its limits (`series` only; unset: `--deployment-series`).
    #[serde(default, skip_serializing_if = "Limits::is_unset")]
    pub limits: Limits,
}

/// Where an export or a link is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// Attached to a Workspace.
    Workspace,
    /// Attached to a Deployment.
    Deployment,
}

impl Scope {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Workspace => "WORKSPACE",
            Scope::Deployment => "DEPLOYMENT",
        }
    }
}

/// The only exporter there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExporterType {
    /// Prometheus remote-write.
    Prometheus,
}

/// How Fanout authenticates to an export target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthType {
    /// No authentication (same as leaving `authType` out; lets an override remove auth).
    None,
    /// `Authorization: Bearer <basicToken>`.
    AuthToken,
    /// `Authorization: Basic` with `username` and `password`.
    Basic,
    /// AWS signature v4 with `sigv4Region`, `sigv4AccessKey`, `sigv4SecretKey`.
    Sigv4,
}

/// Remote-write protocol version spoken to a target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    /// Remote-write 1.0.
    #[default]
    V1,
    /// Remote-write 2.0.
    V2,
}

/// A size: bytes as an integer, or a string like `64MiB`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// Plain bytes.
    Bytes(u64),
    /// `512KiB`, `64MiB`, `1GiB`, `10MB`, ...
    Text(String),
}

/// Delivery options; every field optional here, defaulted in [`super::resolve`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryFields {
    /// Samples per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<u64>,
    /// Send a partial batch after this long (`1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_send_deadline: Option<String>,
    /// Requests in flight at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    /// Request timeout (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Longest retry backoff (`5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    /// Disk spill budget (`1GiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_budget: Option<ByteSize>,
    /// `V1` or `V2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Send over HTTP/2: ALPN `h2` for `https://`, prior knowledge for
    /// `http://` (default false: HTTP/1.1, as Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    /// Most compressed bytes in one request (`4MiB`); unset: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_send: Option<ByteSize>,
    /// Forward the metric family metadata (type, help, unit) of what the
    /// target receives, once per `--metadata-send-interval` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_metadata: Option<bool>,
}

impl DeliveryFields {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == DeliveryFields::default()
    }
}

/// The fields of a metrics export, or of an override of one (all optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportFields {
    /// Remote-write URL (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Always `PROMETHEUS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter_type: Option<ExporterType>,
    /// Absent means no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<AuthType>,
    /// Bearer token for `AUTH_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_token: Option<Secret>,
    /// User for `BASIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for `BASIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// AWS region for `SIGV4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4_region: Option<String>,
    /// AWS access key id for `SIGV4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4_access_key: Option<String>,
    /// AWS secret access key for `SIGV4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4_secret_key: Option<Secret>,
    /// Role to assume for `SIGV4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4_role_arn: Option<String>,
    /// Extra request headers; every value is a secret unless its name is in
    /// `publicHeaders`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Names of headers whose values reads may show (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_headers: Vec<String>,
    /// Labels added to every series sent to the target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Delivery options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryFields>,
    /// In an override written by a client: fields to remove from the stored override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_fields: Vec<String>,
}

impl ExportFields {
    /// Without the credentials its `authType` does not use (a `basicToken`
    /// inherited by an override to `BASIC`, say), for reads of effective
    /// exports: what is listed is what is sent.
    pub fn only_used_auth(mut self) -> ExportFields {
        let auth = self.auth_type.unwrap_or(AuthType::None);
        if auth != AuthType::AuthToken {
            self.basic_token = None;
        }
        if auth != AuthType::Basic {
            self.username = None;
            self.password = None;
        }
        if auth != AuthType::Sigv4 {
            self.sigv4_region = None;
            self.sigv4_access_key = None;
            self.sigv4_secret_key = None;
            self.sigv4_role_arn = None;
        }
        self
    }
}

/// Names of the secret fields of [`ExportFields`], as they appear on the wire.
pub const EXPORT_SECRET_FIELDS: [&str; 3] = ["basicToken", "password", "sigv4SecretKey"];

/// Per-Deployment overrides of a link.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overrides {
    /// Fields that replace the export's for this Deployment.
    #[serde(default)]
    pub metrics_export: ExportFields,
}

/// A link of a WORKSPACE-scope export to one of the Workspace's Deployments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Link {
    /// Always `DEPLOYMENT`.
    pub scope: Scope,
    /// The linked Deployment's id.
    pub scope_entity_id: String,
    /// Field overrides for that Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overrides>,
}

/// An exclusion of one Deployment from an auto-linked export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExcludeLink {
    /// Always `DEPLOYMENT`.
    pub scope: Scope,
    /// The excluded Deployment's id.
    pub scope_entity_id: String,
}

/// A metrics export (Astro's environment object of type METRICS_EXPORT).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsExport {
    /// User-chosen id.
    pub id: String,
    /// The key users see, like an environment variable name.
    pub object_key: String,
    /// WORKSPACE or DEPLOYMENT.
    pub scope: Scope,
    /// The Workspace or Deployment id.
    pub scope_entity_id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// "Linked to all Deployments" (true) or "Restricted" (false).
    #[serde(default)]
    pub auto_link_deployments: bool,
    /// Deployments linked explicitly, with their overrides.
    #[serde(default)]
    pub links: Vec<Link>,
    /// Deployments excluded from auto-linking.
    #[serde(default)]
    pub exclude_links: Vec<ExcludeLink>,
    /// The export's own fields.
    pub metrics_export: ExportFields,
}

/// Any registry object.
// Objects move one at a time through admin writes, never on the hot path, so
// the size difference between variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A cluster.
    Cluster(Cluster),
    /// A Workspace.
    Workspace(Workspace),
    /// A Deployment.
    Deployment(Deployment),
    /// A metrics export.
    MetricsExport(MetricsExport),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Cluster(_) => Kind::Cluster,
            Object::Workspace(_) => Kind::Workspace,
            Object::Deployment(_) => Kind::Deployment,
            Object::MetricsExport(_) => Kind::MetricsExport,
        }
    }

    /// The object's id.
    pub fn id(&self) -> &str {
        match self {
            Object::Cluster(o) => &o.id,
            Object::Workspace(o) => &o.id,
            Object::Deployment(o) => &o.id,
            Object::MetricsExport(o) => &o.id,
        }
    }

    /// The stored form: JSON with secrets in clear. Never send this to a client.
    pub fn to_stored_json(&self) -> Value {
        let value = match self {
            Object::Cluster(o) => serde_json::to_value(o),
            Object::Workspace(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::MetricsExport(o) => serde_json::to_value(o),
        };
        // Serializing plain structs with string keys cannot fail.
        value.unwrap_or(Value::Null)
    }

    /// Parses an object of `kind` from JSON (stored or written by a client).
    ///
    /// `setFields`, which reads add, is accepted and ignored so that a read can be
    /// written back unchanged.
    pub fn from_json(kind: Kind, mut value: Value) -> Result<Object, String> {
        Object::from_json_in_place(kind, &mut value)
    }

    /// Like [`Object::from_json`], reading `value` in place (it only loses
    /// `setFields`), so that a caller can change it and try again.
    pub fn from_json_in_place(kind: Kind, value: &mut Value) -> Result<Object, String> {
        use serde::Deserialize as _;
        strip_set_fields(value);
        let value = &*value;
        let parsed = match kind {
            Kind::Cluster => Cluster::deserialize(value).map(Object::Cluster),
            Kind::Workspace => Workspace::deserialize(value).map(Object::Workspace),
            Kind::Deployment => Deployment::deserialize(value).map(Object::Deployment),
            Kind::MetricsExport => MetricsExport::deserialize(value).map(Object::MetricsExport),
        };
        parsed.map_err(|e| e.to_string())
    }
}

fn strip_set_fields(value: &mut Value) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    obj.remove("setFields");
    if let Some(links) = obj.get_mut("links").and_then(Value::as_array_mut) {
        for link in links {
            if let Some(ov) = link.get_mut("overrides").and_then(Value::as_object_mut) {
                ov.remove("setFields");
            }
        }
    }
}

/// The whole registry, keyed by id (ordered, so every listing is stable).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    /// Clusters by id.
    pub clusters: BTreeMap<String, Cluster>,
    /// Workspaces by id.
    pub workspaces: BTreeMap<String, Workspace>,
    /// Deployments by id.
    pub deployments: BTreeMap<String, Deployment>,
    /// Metrics exports by id.
    pub metrics_exports: BTreeMap<String, MetricsExport>,
}

impl Registry {
    /// The object of `kind` with `id`.
    pub fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Cluster => self.clusters.get(id).cloned().map(Object::Cluster),
            Kind::Workspace => self.workspaces.get(id).cloned().map(Object::Workspace),
            Kind::Deployment => self.deployments.get(id).cloned().map(Object::Deployment),
            Kind::MetricsExport => self
                .metrics_exports
                .get(id)
                .cloned()
                .map(Object::MetricsExport),
        }
    }

    /// Inserts or replaces an object; returns whether one with that id existed.
    pub fn insert(&mut self, object: Object) -> bool {
        match object {
            Object::Cluster(o) => self.clusters.insert(o.id.clone(), o).is_some(),
            Object::Workspace(o) => self.workspaces.insert(o.id.clone(), o).is_some(),
            Object::Deployment(o) => self.deployments.insert(o.id.clone(), o).is_some(),
            Object::MetricsExport(o) => self.metrics_exports.insert(o.id.clone(), o).is_some(),
        }
    }

    /// Removes an object; returns whether it existed.
    pub fn remove(&mut self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Cluster => self.clusters.remove(id).is_some(),
            Kind::Workspace => self.workspaces.remove(id).is_some(),
            Kind::Deployment => self.deployments.remove(id).is_some(),
            Kind::MetricsExport => self.metrics_exports.remove(id).is_some(),
        }
    }

    /// Every object of `kind`, in id order.
    pub fn list(&self, kind: Kind) -> Vec<Object> {
        match kind {
            Kind::Cluster => self
                .clusters
                .values()
                .cloned()
                .map(Object::Cluster)
                .collect(),
            Kind::Workspace => self
                .workspaces
                .values()
                .cloned()
                .map(Object::Workspace)
                .collect(),
            Kind::Deployment => self
                .deployments
                .values()
                .cloned()
                .map(Object::Deployment)
                .collect(),
            Kind::MetricsExport => self
                .metrics_exports
                .values()
                .cloned()
                .map(Object::MetricsExport)
                .collect(),
        }
    }

    /// Every object, kinds in dependency order.
    pub fn objects(&self) -> Vec<Object> {
        Kind::ALL.into_iter().flat_map(|k| self.list(k)).collect()
    }

    /// Builds a registry from a document; duplicate ids are problems.
    pub fn from_document(doc: Document) -> Result<Registry, Vec<String>> {
        let mut registry = Registry::default();
        let mut problems = Vec::new();
        let objects = doc
            .clusters
            .into_iter()
            .map(Object::Cluster)
            .chain(doc.workspaces.into_iter().map(Object::Workspace))
            .chain(doc.deployments.into_iter().map(Object::Deployment))
            .chain(doc.metrics_exports.into_iter().map(Object::MetricsExport));
        for object in objects {
            let (kind, id) = (object.kind(), object.id().to_owned());
            if registry.insert(object) {
                problems.push(format!("{}: duplicate id {id:?}", kind.document_key()));
            }
        }
        if problems.is_empty() {
            Ok(registry)
        } else {
            Err(problems)
        }
    }

    /// The registry as a declarative document (secrets in clear).
    pub fn to_document(&self) -> Document {
        Document {
            clusters: self.clusters.values().cloned().collect(),
            workspaces: self.workspaces.values().cloned().collect(),
            deployments: self.deployments.values().cloned().collect(),
            metrics_exports: self.metrics_exports.values().cloned().collect(),
        }
    }
}

/// A declarative registry file: `clusters`, `workspaces`, `deployments`, `metricsExports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// Clusters.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Workspaces.
    #[serde(default)]
    pub workspaces: Vec<Workspace>,
    /// Deployments.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Metrics exports.
    #[serde(default)]
    pub metrics_exports: Vec<MetricsExport>,
}

impl Document {
    /// Parses JSON or YAML text (YAML when `yaml` is set), listing every problem
    /// with the position of the object it concerns.
    pub fn parse(text: &[u8], yaml: bool) -> Result<Document, Vec<String>> {
        let value = parse_value(text, yaml).map_err(|e| vec![e])?;
        Document::from_value(value)
    }

    /// Builds a document from a JSON value, object by object, so one bad object
    /// does not hide the problems of the others.
    pub fn from_value(value: Value) -> Result<Document, Vec<String>> {
        let Value::Object(mut map) = value else {
            return Err(vec![
                "the registry document must be an object with clusters, workspaces, deployments and metricsExports".into(),
            ]);
        };
        let mut problems = Vec::new();
        let mut doc = Document::default();
        for kind in Kind::ALL {
            let key = kind.document_key();
            let items = match map.remove(key) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items,
                Some(_) => {
                    problems.push(format!("{key}: must be a list"));
                    continue;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let label = match item.get("id").and_then(Value::as_str) {
                    Some(id) => format!("{key}[{i}] ({})", super::validate::shown(id)),
                    None => format!("{key}[{i}]"),
                };
                match Object::from_json(kind, item) {
                    Ok(Object::Cluster(o)) => doc.clusters.push(o),
                    Ok(Object::Workspace(o)) => doc.workspaces.push(o),
                    Ok(Object::Deployment(o)) => doc.deployments.push(o),
                    Ok(Object::MetricsExport(o)) => doc.metrics_exports.push(o),
                    Err(e) => problems.push(format!("{label}: {e}")),
                }
            }
        }
        for key in map.keys() {
            problems.push(format!(
                "unknown key {key:?} (expected clusters, workspaces, deployments, metricsExports)"
            ));
        }
        if problems.is_empty() {
            Ok(doc)
        } else {
            Err(problems)
        }
    }
}

/// Parses JSON or YAML text into a JSON value.
pub fn parse_value(text: &[u8], yaml: bool) -> Result<Value, String> {
    if yaml {
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_slice(text).map_err(|e| format!("invalid YAML: {e}"))?;
        serde_json::to_value(value).map_err(|e| format!("invalid YAML: {e}"))
    } else {
        // serde_json keeps the last of duplicate keys without a word; a
        // document saying two things about one field is refused instead.
        serde_json::from_slice::<NoDuplicateKeys>(text)
            .map_err(|e| format!("invalid JSON: {e}"))?;
        serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))
    }
}

/// Deserializes any JSON document, failing on an object with a key twice
/// ("duplicate key \"x\" at line 1 column 20").
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!("duplicate key {shown:?}")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// The read form of an object: secrets replaced by `"***"` and listed in `setFields`.
pub fn masked(object: &Object) -> Value {
    let mut value = object.to_stored_json();
    let Some(obj) = value.as_object_mut() else {
        return value;
    };
    match object {
        Object::Cluster(c) => {
            let mut set = Vec::new();
            if !c.ingest_token.is_empty() {
                obj.insert("ingestToken".into(), Value::from(MASK));
                set.push("ingestToken".to_owned());
            }
            obj.insert("setFields".into(), Value::from(set));
        }
        Object::MetricsExport(e) => {
            let set = obj
                .get_mut("metricsExport")
                .map(|f| mask_export_fields(f, &[]))
                .unwrap_or_default();
            obj.insert("setFields".into(), Value::from(set));
            // An override's headers are public if the export or the override says so.
            let public = &e.metrics_export.public_headers;
            if let Some(links) = obj.get_mut("links").and_then(Value::as_array_mut) {
                for link in links {
                    if let Some(ov) = link.get_mut("overrides").and_then(Value::as_object_mut) {
                        let set = ov
                            .get_mut("metricsExport")
                            .map(|f| mask_export_fields(f, public))
                            .unwrap_or_default();
                        ov.insert("setFields".into(), Value::from(set));
                    }
                }
            }
        }
        Object::Workspace(_) | Object::Deployment(_) => {}
    }
    value
}

/// Masks the secrets of a serialized [`ExportFields`]; returns the names that
/// were set (`basicToken`, `headers.X-Api-Key`, ...).
///
/// Header values are masked unless the header is named in the fields'
/// `publicHeaders` or in `public`; the endpoint's query values always are.
pub fn mask_export_fields(fields: &mut Value, public: &[String]) -> Vec<String> {
    let mut set = Vec::new();
    let Some(obj) = fields.as_object_mut() else {
        return set;
    };
    for name in EXPORT_SECRET_FIELDS {
        if let Some(v) = obj.get_mut(name) {
            *v = Value::from(MASK);
            set.push(name.to_owned());
        }
    }
    if let Some(Value::String(endpoint)) = obj.get_mut("endpoint") {
        if let Cow::Owned(m) = mask_endpoint(endpoint) {
            *endpoint = m;
        }
    }
    let own: Vec<String> = obj
        .get("publicHeaders")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(headers) = obj.get_mut("headers").and_then(Value::as_object_mut) {
        for (name, value) in headers.iter_mut() {
            if !is_public_header(name, public) && !is_public_header(name, &own) {
                *value = Value::from(MASK);
                set.push(format!("headers.{name}"));
            }
        }
    }
    set
}

/// Headers whose values are credentials whatever `publicHeaders` says.
pub const ALWAYS_SECRET_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];

/// Whether reads may show the value of header `name` given a `publicHeaders` list.
pub fn is_public_header(name: &str, public: &[String]) -> bool {
    !ALWAYS_SECRET_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
        && public.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// A whole registry in its read form.
pub fn masked_document(registry: &Registry) -> Value {
    let mut doc = serde_json::Map::new();
    for kind in Kind::ALL {
        let items: Vec<Value> = registry.list(kind).iter().map(masked).collect();
        doc.insert(kind.document_key().into(), Value::from(items));
    }
    Value::Object(doc)
}

/// Replaces every `"***"` secret in `new` with the value stored in `old`.
///
/// Returns a problem for each placeholder that has nothing stored to keep.
pub fn restore_secrets(new: &mut Object, old: Option<&Object>) -> Vec<String> {
    let mut problems = Vec::new();
    let where_ = format!("{} {}", new.kind().as_str(), new.id());
    match (new, old) {
        (Object::Cluster(n), old) if n.ingest_token.is_mask() => match old {
            Some(Object::Cluster(o)) => n.ingest_token = o.ingest_token.clone(),
            _ => problems.push(format!(
                "{where_}: ingestToken is \"***\" but no token is stored; send the token"
            )),
        },
        (Object::MetricsExport(n), old) => {
            let old = match old {
                Some(Object::MetricsExport(o)) => Some(o),
                _ => None,
            };
            restore_export_fields(
                &mut n.metrics_export,
                old.map(|o| &o.metrics_export),
                &format!("{where_}: metricsExport"),
                &mut problems,
            );
            for link in &mut n.links {
                let Some(ov) = link.overrides.as_mut() else {
                    continue;
                };
                let old_ov = old
                    .and_then(|o| {
                        o.links
                            .iter()
                            .find(|l| l.scope_entity_id == link.scope_entity_id)
                    })
                    .and_then(|l| l.overrides.as_ref())
                    .map(|o| &o.metrics_export);
                restore_export_fields(
                    &mut ov.metrics_export,
                    old_ov,
                    &format!(
                        "{where_}: link {}: overrides.metricsExport",
                        link.scope_entity_id
                    ),
                    &mut problems,
                );
            }
        }
        _ => {}
    }
    problems
}

fn restore_export_fields(
    new: &mut ExportFields,
    old: Option<&ExportFields>,
    where_: &str,
    problems: &mut Vec<String>,
) {
    let pairs: [(&str, &mut Option<Secret>, Option<&Secret>); 3] = [
        (
            "basicToken",
            &mut new.basic_token,
            old.and_then(|o| o.basic_token.as_ref()),
        ),
        (
            "password",
            &mut new.password,
            old.and_then(|o| o.password.as_ref()),
        ),
        (
            "sigv4SecretKey",
            &mut new.sigv4_secret_key,
            old.and_then(|o| o.sigv4_secret_key.as_ref()),
        ),
    ];
    for (name, slot, stored) in pairs {
        if slot.as_ref().is_some_and(Secret::is_mask) {
            match stored {
                Some(s) => *slot = Some(s.clone()),
                None => problems.push(format!(
                    "{where_}.{name} is \"***\" but no value is stored; send the value"
                )),
            }
        }
    }
    for (name, value) in new.headers.iter_mut() {
        if !value.is_mask() {
            continue;
        }
        let stored = old.and_then(|o| {
            o.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        });
        match stored {
            Some(s) => *value = s.clone(),
            None => problems.push(format!(
                "{where_}.headers.{name} is \"***\" but no value is stored; send the value"
            )),
        }
    }
    if let Some(endpoint) = new.endpoint.as_mut() {
        if endpoint_has_mask(endpoint) {
            // Only the read form of the stored endpoint stands for it: a
            // changed URL with a "***" in it would be sent as written.
            match old.and_then(|o| o.endpoint.as_deref()) {
                Some(stored) if mask_endpoint(stored) == endpoint.as_str() => {
                    *endpoint = stored.to_owned();
                }
                _ => problems.push(format!(
                    "{where_}.endpoint has a query value \"***\" but is not the stored endpoint as reads show it; send the query values"
                )),
            }
        }
    }
}

/// Applies and drops the `unsetFields` of every link override of an export.
///
/// An `unsetFields` on the export's own fields is a problem: there is nothing
/// to revert to.
pub fn apply_unset_fields(export: &mut MetricsExport) -> Vec<String> {
    let mut problems = Vec::new();
    if !export.metrics_export.unset_fields.is_empty() {
        problems.push(format!(
            "metricsExport {}: unsetFields is only valid in a link's overrides",
            export.id
        ));
    }
    for link in &mut export.links {
        let Some(ov) = link.overrides.as_mut() else {
            continue;
        };
        let fields = &mut ov.metrics_export;
        for name in std::mem::take(&mut fields.unset_fields) {
            if !unset_field(fields, &name) {
                problems.push(format!(
                    "metricsExport {}: link {}: unsetFields: unknown field {name:?}",
                    export.id, link.scope_entity_id
                ));
            }
        }
    }
    problems
}

/// Removes one field from an override; false if `name` names no field.
fn unset_field(fields: &mut ExportFields, name: &str) -> bool {
    if let Some(key) = name.strip_prefix("headers.") {
        fields.headers.retain(|k, _| !k.eq_ignore_ascii_case(key));
        return !key.is_empty();
    }
    if let Some(key) = name.strip_prefix("labels.") {
        fields.labels.remove(key);
        return !key.is_empty();
    }
    if let Some(key) = name.strip_prefix("delivery.") {
        let Some(d) = fields.delivery.as_mut() else {
            return DELIVERY_FIELDS.contains(&key);
        };
        match key {
            "maxSamplesPerSend" => d.max_samples_per_send = None,
            "batchSendDeadline" => d.batch_send_deadline = None,
            "maxConcurrency" => d.max_concurrency = None,
            "timeout" => d.timeout = None,
            "maxBackoff" => d.max_backoff = None,
            "diskBudget" => d.disk_budget = None,
            "protocol" => d.protocol = None,
            "http2" => d.http2 = None,
            "maxBytesPerSend" => d.max_bytes_per_send = None,
            "sendMetadata" => d.send_metadata = None,
            _ => return false,
        }
        if d.is_empty() {
            fields.delivery = None;
        }
        return true;
    }
    match name {
        "endpoint" => fields.endpoint = None,
        "exporterType" => fields.exporter_type = None,
        "authType" => fields.auth_type = None,
        "basicToken" => fields.basic_token = None,
        "username" => fields.username = None,
        "password" => fields.password = None,
        "sigv4Region" => fields.sigv4_region = None,
        "sigv4AccessKey" => fields.sigv4_access_key = None,
        "sigv4SecretKey" => fields.sigv4_secret_key = None,
        "sigv4RoleArn" => fields.sigv4_role_arn = None,
        "headers" => fields.headers.clear(),
        "publicHeaders" => fields.public_headers.clear(),
        "labels" => fields.labels.clear(),
        "delivery" => fields.delivery = None,
        _ => return false,
    }
    true
}

const DELIVERY_FIELDS: [&str; 10] = [
    "maxSamplesPerSend",
    "batchSendDeadline",
    "maxConcurrency",
    "timeout",
    "maxBackoff",
    "diskBudget",
    "protocol",
    "http2",
    "maxBytesPerSend",
    "sendMetadata",
];

/// RFC 7396 JSON merge patch: `patch` applied onto `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
