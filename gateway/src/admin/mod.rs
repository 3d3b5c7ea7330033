//! Admin API (SPEC §6) on its own port.
//!
//! # Shape
//! - [`api`]: the registry endpoints (CRUD per kind, effective exports of a
//!   Deployment, the whole declarative registry) as axum handlers over
//!   [`crate::registry::live::Live`]; every write goes through
//!   [`crate::registry::ops`] inside the store's transaction.
//! - [`openapi`]: the OpenAPI 3 document served at `/api/v1/openapi.json`.
//! - [`apply`]: the `fanout apply` client.
//! - [`tls`]: HTTPS on the admin port (`--admin-tls-cert`, `--admin-tls-key`).
//!
//! # Security
//! Every `/api/` route requires `Authorization: Bearer <admin token>` when a
//! token is configured. Without a token [`bind`] refuses any address that is
//! not loopback, so an unauthenticated admin API is never reachable from
//! another host. Reads mask secrets; errors and logs never contain them.
//! `/healthz` and `/readyz` need no token (probes).

pub mod api;
pub mod apply;
pub mod openapi;
pub mod paging;
pub mod status;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::registry::live::Live;
use crate::registry::Secret;

/// Largest request body the admin API reads (a whole registry document).
pub const MAX_BODY: usize = 16 << 20;

/// Process health as the probes see it.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Marks the registry loaded and the gateway accepting writes.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Marks the gateway draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The live registry.
    pub live: Arc<Live>,
    /// Admin bearer token; `None` only on loopback.
    pub token: Option<Secret>,
    /// Readiness.
    pub health: Arc<Health>,
    /// What delivery knows of Deployments' exports and limits (none in
    /// tests of the registry API alone).
    pub status: Option<Arc<dyn StatusSource>>,
    /// This gateway's name and report interval, for the fleet's status.
    pub reporting: status::Reporting,
}

/// Delivery's side of the Deployment and export API reads.
pub trait StatusSource: Send + Sync {
    /// The state of Deployment `id`'s series limit and of its cluster's, as
    /// far as they have one.
    fn limits(&self, deployment: &str, cluster: &str) -> Option<fanout_proto::api::LimitsStatus>;
    /// How the export that leads `deployment`'s series to `target` is going.
    fn export_status(
        &self,
        deployment: &str,
        target: &str,
    ) -> Option<fanout_proto::api::ExportStatus>;
}

/// Why the admin server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No token and a non-loopback address.
    #[error("refusing to serve the admin API on {0} without an admin token: set --admin-token (or FANOUT_ADMIN_TOKEN), or listen on 127.0.0.1")]
    NoTokenOffLoopback(SocketAddr),
    /// The address cannot be bound.
    #[error("cannot listen on {addr} for the admin API: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the admin address, refusing non-loopback addresses without a token.
pub async fn bind(addr: SocketAddr, token: Option<&Secret>) -> Result<TcpListener, AdminError> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(AdminError::NoTokenOffLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// The admin router: probes, then the authenticated API.
pub fn router(state: AdminState) -> Router {
    let api = api::routes()
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async { api::ApiError::not_found("no such route") })
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.health.is_ready() {
        // Ready for traffic whether or not the store is reachable: a load
        // balancer must not drain the fleet because PostgreSQL is down.
        if state.live.reachable() {
            (StatusCode::OK, "ready\n").into_response()
        } else {
            (
                StatusCode::OK,
                "ready (store: unreachable; serving the registry as last loaded)\n",
            )
                .into_response()
        }
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    check_admin_token(state.token.as_ref(), request, next).await
}

/// The admin token check of every admin route (registry here, delivery in
/// `deliver::api`): `Authorization: Bearer <token>`, or 401. Without a token
/// every request passes (the admin listener is then loopback-only).
pub(crate) async fn check_admin_token(
    token: Option<&Secret>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::ingest::auth::bearer);
    if given.is_some_and(|g| token.matches(g)) {
        next.run(request).await
    } else {
        let body = fanout_proto::api::ErrorBody {
            error: "missing or wrong admin token (Authorization: Bearer ...)".into(),
            problems: Vec::new(),
        };
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(body),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use crate::registry::store;

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[test]
    fn admin_bearer_scheme_is_case_insensitive() {
        use crate::ingest::auth::bearer;
        assert_eq!(bearer("Bearer t0k"), Some("t0k"));
        assert_eq!(bearer("bearer t0k"), Some("t0k"));
        assert_eq!(bearer("BEARER  t0k "), Some("t0k"));
        assert_eq!(bearer("Basic t0k"), None);
        assert_eq!(bearer("Bearert0k"), None);
    }

    #[tokio::test]
    async fn admin_api_statuses_problems_and_masking() {
        let dir = tempfile::tempdir().unwrap();
        let live = Live::open(store::open(None, dir.path()).await.unwrap())
            .await
            .unwrap();
        let health = Arc::new(Health::default());
        let app = router(AdminState {
            live,
            token: Some(Secret::new("adm")),
            health: health.clone(),
            status: None,
            reporting: status::Reporting {
                gateway: "test:0".into(),
                interval: std::time::Duration::from_secs(5),
            },
        });
        let t = Some("adm");

        assert_eq!(
            call(&app, "GET", "/api/v1/clusters", None, "").await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/clusters", Some("nope"), "")
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "GET", "/healthz", None, "").await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", "/readyz", None, "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready();
        assert_eq!(
            call(&app, "GET", "/readyz", None, "").await.0,
            StatusCode::OK
        );

        let cluster = r#"{"id": "c1", "organizationId": "o", "cloudProvider": "aws", "cloudRegion": "r", "ingestToken": "tok-secret"}"#;
        let (s, v) = call(&app, "POST", "/api/v1/clusters", t, cluster).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["ingestToken"], "***");
        assert_eq!(
            call(&app, "POST", "/api/v1/clusters", t, cluster).await.0,
            StatusCode::CONFLICT
        );
        for (kind, body) in [
            ("workspaces", r#"{"id": "ws", "organizationId": "o"}"#),
            (
                "deployments",
                r#"{"id": "d1", "workspaceId": "ws", "clusterId": "c1", "namespace": "n1", "type": "HOSTED"}"#,
            ),
            (
                "metrics-exports",
                r#"{"id": "e", "objectKey": "e", "scope": "WORKSPACE", "scopeEntityId": "ws", "autoLinkDeployments": true,
                "metricsExport": {"endpoint": "http://127.0.0.1:1/w", "authType": "AUTH_TOKEN", "basicToken": "bt-secret"}}"#,
            ),
            // Overridden for d1 to BASIC: the inherited basicToken is not used.
            (
                "metrics-exports",
                r#"{"id": "f", "objectKey": "f", "scope": "WORKSPACE", "scopeEntityId": "ws", "autoLinkDeployments": false,
                "links": [{"scope": "DEPLOYMENT", "scopeEntityId": "d1", "overrides": {"metricsExport":
                  {"authType": "BASIC", "username": "u", "password": "pw-secret"}}}],
                "metricsExport": {"endpoint": "http://127.0.0.1:1/f", "authType": "AUTH_TOKEN", "basicToken": "bt2-secret"}}"#,
            ),
        ] {
            let (s, v) = call(&app, "POST", &format!("/api/v1/{kind}"), t, body).await;
            assert_eq!(s, StatusCode::CREATED, "{kind}: {v}");
        }

        // Every problem of an invalid write, nothing applied.
        let bad = r#"{"scopeEntityId": "nope", "autoLinkDeployments": true, "metricsExport": {"endpoint": "mailto:x", "labels": {"pod": "p"}}}"#;
        let (s, v) = call(&app, "PATCH", "/api/v1/metrics-exports/e", t, bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v}");
        let (_, v) = call(&app, "GET", "/api/v1/deployments/d1/metrics-exports", t, "").await;
        assert_eq!(v["items"][0]["id"], "e");
        assert_eq!(v["items"][0]["metricsExport"]["basicToken"], "***");
        assert_eq!(
            v["items"][0]["setFields"],
            serde_json::json!(["basicToken"])
        );
        assert_eq!(v["items"][0]["targetId"].as_str().unwrap().len(), 32);
        let f = &v["items"][1];
        assert_eq!(f["id"], "f", "{v}");
        assert_eq!(f["metricsExport"]["authType"], "BASIC", "{f}");
        assert_eq!(f["metricsExport"]["password"], "***", "{f}");
        assert!(f["metricsExport"].get("basicToken").is_none(), "{f}");
        assert_eq!(f["setFields"], serde_json::json!(["password"]), "{f}");

        assert_eq!(
            call(&app, "GET", "/api/v1/clusters/nope", t, "").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/nothing", t, "").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, "DELETE", "/api/v1/workspaces/ws", t, "").await.0,
            StatusCode::CONFLICT
        );
        let (s, v) = call(&app, "GET", "/api/v1/openapi.json", t, "").await;
        assert_eq!(s, StatusCode::OK);
        assert!(v["paths"]["/api/v1/metrics-exports/{id}"]["patch"].is_object());

        // The whole registry round-trips through GET and PUT with secrets kept.
        let (_, doc) = call(&app, "GET", "/api/v1/registry", t, "").await;
        let text = doc.to_string();
        assert!(
            !text.contains("tok-secret") && !text.contains("bt-secret"),
            "{text}"
        );
        let (s, v) = call(&app, "PUT", "/api/v1/registry", t, &text).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = call(
            &app,
            "PUT",
            "/api/v1/registry",
            t,
            r#"{"clusters": [{"id": "x"}], "bogus": 1}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["problems"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(
            call(&app, "DELETE", "/api/v1/metrics-exports/e", t, "")
                .await
                .0,
            StatusCode::NO_CONTENT
        );
    }

    #[tokio::test]
    async fn no_token_means_loopback_only() {
        let err = bind("0.0.0.0:0".parse().unwrap(), None).await.unwrap_err();
        assert!(matches!(err, AdminError::NoTokenOffLoopback(_)));
        assert!(bind("127.0.0.1:0".parse().unwrap(), None).await.is_ok());
    }
}
