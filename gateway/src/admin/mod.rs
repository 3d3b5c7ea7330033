//! Admin API (SPEC §6) on its own port.
//!
//! # Shape
//! - [`api`]: the registry endpoints (CRUD per kind, effective exports of a
//!   Deployment, the whole declarative registry) as axum handlers over
//!   [`crate::registry::live::Live`]; every write goes through
//!   [`crate::registry::ops`] inside the store's transaction.
//! - [`openapi`]: the OpenAPI 3 document served at `/api/v1/openapi.json`.
//! - [`apply`]: the `fanout apply` client.
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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
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
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.expose()) {
        next.run(request).await
    } else {
        let body = json!({"error": "missing or wrong admin token (Authorization: Bearer ...)", "problems": []});
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(body),
        )
            .into_response()
    }
}
