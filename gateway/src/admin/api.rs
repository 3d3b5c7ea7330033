//! Registry endpoints of the admin API.
//!
//! Bodies are read as bytes and parsed here (JSON, or YAML where the
//! Content-Type says so), so every failure answers in the one error shape
//! `{"error": "...", "problems": [...]}` rather than a framework default.
//! A write returns only after the new snapshot is installed on this gateway.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use fanout_proto::api;
use serde_json::Value;

use super::paging::Page;
use super::AdminState;
use crate::registry::model::{
    mask_export_fields, masked, masked_document, parse_value, Document, Kind, Object,
};
use crate::registry::ops;
use crate::registry::resolve::effective_exports;
use crate::registry::store::UpdateError;
use crate::registry::Snapshot;
use std::sync::Arc;

/// An error answer: status, one-line message, and every problem.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What failed.
    pub error: String,
    /// Every problem found (may be empty).
    pub problems: Vec<String>,
}

impl ApiError {
    /// 404 with a message.
    pub fn not_found(what: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: format!("not found: {what}"),
            problems: Vec::new(),
        }
    }

    fn bad_request(error: &str, problems: Vec<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: error.to_owned(),
            problems,
        }
    }
}

/// Seconds a client is told to wait when the registry store is unavailable.
const STORE_RETRY_AFTER_SECS: u32 = 10;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::ErrorBody {
            error: self.error,
            problems: self.problems,
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, STORE_RETRY_AFTER_SECS.into());
        }
        res
    }
}

impl From<UpdateError> for ApiError {
    fn from(e: UpdateError) -> ApiError {
        match e {
            UpdateError::Invalid(problems) => {
                ApiError::bad_request("invalid registry: nothing was applied", problems)
            }
            UpdateError::NotFound(what) => ApiError::not_found(&what),
            UpdateError::Conflict(problems) => ApiError {
                status: StatusCode::CONFLICT,
                error: "conflict: nothing was applied".into(),
                problems,
            },
            UpdateError::Store(e) if e.unavailable().is_some() => {
                let cause = e.unavailable().unwrap_or_default();
                tracing::warn!(error = %e, "admin: registry store unavailable ({cause}); the change was refused with 503");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error: format!(
                        "the registry store is unavailable ({cause}); nothing was applied, try again later"
                    ),
                    problems: Vec::new(),
                }
            }
            UpdateError::Store(e) => {
                tracing::error!(error = %e, "admin: registry store failed");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    error: "the registry store failed; see the gateway log".into(),
                    problems: Vec::new(),
                }
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// The registry routes (without authentication; the caller layers it).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/registry", get(get_registry).put(put_registry))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/deployments/{id}/metrics-exports", get(effective))
        .route("/api/v1/metrics-exports/{id}/status", get(export_status))
        .route("/api/v1/{kind}", get(list).post(create))
        .route(
            "/api/v1/{kind}/{id}",
            get(get_one)
                .put(put_one)
                .patch(patch_one)
                .delete(delete_one),
        )
}

fn kind_of(segment: &str) -> Result<Kind, ApiError> {
    match segment {
        "clusters" => Ok(Kind::Cluster),
        "workspaces" => Ok(Kind::Workspace),
        "deployments" => Ok(Kind::Deployment),
        "metrics-exports" => Ok(Kind::MetricsExport),
        _ => Err(ApiError::not_found(&format!("/api/v1/{segment}"))),
    }
}

fn is_yaml(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"))
}

fn body_value(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    parse_value(body, is_yaml(headers, header::CONTENT_TYPE))
        .map_err(|e| ApiError::bad_request("unreadable body", vec![e]))
}

async fn list(
    State(s): State<AdminState>,
    Path(kind): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let snapshot = s.live.current();
    let all: Vec<Value> = snapshot.registry().list(kind).iter().map(masked).collect();
    // `q` matches any field of the read form (secrets are "***" there).
    let (items, next) = page.select(
        all,
        |v| v["id"].as_str().unwrap_or_default().to_owned(),
        Value::to_string,
    );
    Ok(Json(api::Items { items, next }).into_response())
}

async fn get_one(
    State(s): State<AdminState>,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let snapshot = s.live.current();
    let object = snapshot
        .registry()
        .get(kind, &id)
        .ok_or_else(|| ApiError::not_found(&format!("{} {id}", kind.as_str())))?;
    Ok(Json(masked(&object)).into_response())
}

fn written(s: &AdminState, kind: Kind, id: &str, status: StatusCode) -> ApiResult {
    let snapshot = s.live.current();
    let object = snapshot
        .registry()
        .get(kind, id)
        .ok_or_else(|| ApiError::not_found(&format!("{} {id}", kind.as_str())))?;
    Ok((status, Json(masked(&object))).into_response())
}

async fn create(
    State(s): State<AdminState>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let value = body_value(&headers, &body)?;
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("invalid object", vec!["id: required".into()]))?;
    s.live.update(move |r| ops::create(r, value, kind)).await?;
    written(&s, kind, &id, StatusCode::CREATED)
}

async fn put_one(
    State(s): State<AdminState>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let value = body_value(&headers, &body)?;
    let key = id.clone();
    s.live
        .update(move |r| ops::replace(r, kind, &key, value))
        .await?;
    written(&s, kind, &id, StatusCode::OK)
}

async fn patch_one(
    State(s): State<AdminState>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let value = body_value(&headers, &body)?;
    let key = id.clone();
    s.live
        .update(move |r| ops::patch(r, kind, &key, value))
        .await?;
    written(&s, kind, &id, StatusCode::OK)
}

async fn delete_one(
    State(s): State<AdminState>,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    s.live.update(move |r| ops::delete(r, kind, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn effective(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let snapshot = s.live.current();
    let registry = snapshot.registry();
    if !registry.deployments.contains_key(&id) {
        return Err(ApiError::not_found(&format!("deployment {id}")));
    }
    let others = super::status::others(s.live.store(), &s.reporting, Some(&id)).await;
    let status_of = |target: &str| {
        let own = s.status.as_ref()?.export_status(&id, target);
        super::status::fleet_status(own, &s.reporting, &id, target, &others)
    };
    let items = effective_exports(registry, &id, snapshot.salt())
        .into_iter()
        .map(|e| {
            let mut fields = serde_json::to_value(e.fields.only_used_auth()).unwrap_or(Value::Null);
            // The merged fields carry the merged publicHeaders.
            let set_fields = mask_export_fields(&mut fields, &[]);
            api::EffectiveExport {
                id: e.export_id,
                object_key: e.object_key,
                source_scope: e.source_scope.as_str().to_owned(),
                source_scope_entity_id: e.source_scope_entity_id,
                status: status_of(&e.target_id.0),
                target_id: e.target_id.0,
                metrics_export: fields,
                set_fields,
            }
        })
        .collect();
    let limits = registry
        .deployments
        .get(&id)
        .and_then(|d| s.status.as_ref()?.limits(&id, &d.cluster_id));
    Ok(Json(api::DeploymentExports { items, limits }).into_response())
}

/// The export's status for every Deployment it applies to (after links,
/// exclusions and overrides), each through the target it resolves to.
async fn export_status(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult {
    let snapshot = s.live.current();
    let registry = snapshot.registry();
    if !registry.metrics_exports.contains_key(&id) {
        return Err(ApiError::not_found(&format!("metrics export {id}")));
    }
    // (Deployment, target) pairs first, from the compiled targets' routes
    // (resolving every Deployment again took a second at 10,000);
    // statuses for the page only.
    let pairs: Vec<(String, String)> = snapshot
        .targets()
        .flat_map(|t| {
            t.routes
                .iter()
                .filter(|r| r.export_id == id)
                .map(|r| (r.deployment_id.clone(), t.id.0.clone()))
        })
        .collect();
    let (pairs, next) = page.select(pairs, |(d, _)| d.clone(), |(_, t)| t.clone());
    let others = super::status::others(s.live.store(), &s.reporting, None).await;
    let items = pairs
        .into_iter()
        .map(|(d, target)| {
            let own = s
                .status
                .as_ref()
                .and_then(|st| st.export_status(&d, &target));
            api::DeploymentExportStatus {
                status: super::status::fleet_status(own, &s.reporting, &d, &target, &others),
                deployment_id: d,
                target_id: target,
            }
        })
        .collect();
    Ok(Json(api::ExportStatuses { id, items, next }).into_response())
}

async fn get_registry(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    let snapshot = s.live.current();
    let doc = masked_document(snapshot.registry());
    if is_yaml(&headers, header::ACCEPT) {
        let text = serde_yaml_ng::to_string(&doc).map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: format!("cannot render YAML: {e}"),
            problems: Vec::new(),
        })?;
        return Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response());
    }
    Ok(Json(doc).into_response())
}

/// `?dryRun=true` on `PUT /api/v1/registry`.
#[derive(serde::Deserialize)]
struct PutQuery {
    #[serde(rename = "dryRun", default)]
    dry_run: bool,
}

async fn put_registry(
    State(s): State<AdminState>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let doc =
        Document::parse(&body, is_yaml(&headers, header::CONTENT_TYPE)).map_err(|problems| {
            ApiError::bad_request("invalid registry: nothing was applied", problems)
        })?;
    if query.dry_run {
        // The same checks as a write, against the registry in force; the
        // store is not touched (a write racing this one may still win).
        let current = s.live.current();
        let (next, plan) = ops::plan(current.registry(), doc)?;
        let would = Snapshot::build(Arc::new(next), current.version(), current.salt().into());
        return Ok(Json(api::Planned {
            version: current.version(),
            created: plan.created,
            changed: plan.changed,
            removed: plan.removed,
            would_hold: holds(&would),
        })
        .into_response());
    }
    let snapshot = s.live.update(move |r| ops::replace_all(r, doc)).await?;
    Ok(Json(holds(&snapshot)).into_response())
}

/// What a snapshot holds, as `PUT /api/v1/registry` answers it.
pub fn holds(snapshot: &Snapshot) -> api::Applied {
    let r = snapshot.registry();
    api::Applied {
        version: snapshot.version(),
        clusters: r.clusters.len() as u64,
        workspaces: r.workspaces.len() as u64,
        deployments: r.deployments.len() as u64,
        metrics_exports: r.metrics_exports.len() as u64,
        targets: snapshot.targets().count() as u64,
    }
}

async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

/// The read form of an object (re-exported for other admin endpoints).
pub fn read_form(object: &Object) -> Value {
    masked(object)
}
