//! Delivery routes of the admin API (docs/stats-api.md, SPEC §6):
//! `GET /api/v1/targets`, `POST /api/v1/targets/{id}/pause|resume`,
//! `GET /api/v1/stats`, `GET /api/v1/stats/stream` (SSE, one snapshot a
//! second) and `GET /metrics` (Prometheus text). All need the admin token
//! when one is configured, like the rest of the admin API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::service::FanoutDelivery;
use crate::admin::Health;
use crate::registry::Secret;

/// What the delivery routes share.
#[derive(Clone)]
pub struct DeliveryApi {
    /// The delivery.
    pub delivery: FanoutDelivery,
    /// Readiness and drain state.
    pub health: Arc<Health>,
    /// Admin token.
    pub token: Option<Secret>,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `host:port` of this gateway's admin API, shown as `gateway`.
    pub gateway: String,
    /// Whether the gateway is draining.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl DeliveryApi {
    fn stats(&self) -> serde_json::Value {
        let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
        self.delivery
            .stats_json(&self.gateway, self.health.is_ready(), draining)
    }
}

/// The delivery routes, to merge into the admin router.
pub fn routes(api: DeliveryApi) -> Router {
    Router::new()
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/targets/{id}/pause", post(pause))
        .route("/api/v1/targets/{id}/resume", post(resume))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/stats/stream", get(stream))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token))
        .with_state(api)
}

async fn require_token(State(api): State<DeliveryApi>, request: Request, next: Next) -> Response {
    let Some(token) = &api.token else {
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
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "missing or wrong admin token (Authorization: Bearer ...)", "problems": []})),
        )
            .into_response()
    }
}

async fn targets(State(api): State<DeliveryApi>) -> Response {
    Json(json!({"items": api.delivery.targets_json()})).into_response()
}

fn set_paused(api: &DeliveryApi, id: &str, paused: bool) -> Response {
    match api.delivery.target(id) {
        Some(t) => {
            t.set_paused(paused);
            tracing::info!(target_id = %id, paused, "delivery: target paused state changed by the admin API");
            let snap = api.delivery.snapshot();
            Json(t.to_json(&snap)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no target {id:?}"), "problems": []})),
        )
            .into_response(),
    }
}

async fn pause(State(api): State<DeliveryApi>, Path(id): Path<String>) -> Response {
    set_paused(&api, &id, true)
}

async fn resume(State(api): State<DeliveryApi>, Path(id): Path<String>) -> Response {
    set_paused(&api, &id, false)
}

async fn stats(State(api): State<DeliveryApi>) -> Response {
    Json(api.stats()).into_response()
}

async fn stream(State(api): State<DeliveryApi>) -> impl IntoResponse {
    let ticks = tokio::time::interval(Duration::from_secs(1));
    let events = futures::stream::unfold((api, ticks), |(api, mut ticks)| async move {
        ticks.tick().await;
        let event = Event::default()
            .event("stats")
            .data(api.stats().to_string());
        Some((Ok::<_, Infallible>(event), (api, ticks)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

async fn metrics_text(State(api): State<DeliveryApi>) -> Response {
    match &api.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}
