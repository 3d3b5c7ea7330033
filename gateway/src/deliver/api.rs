//! Delivery routes of the admin API (docs/stats-api.md, SPEC §6):
//! `GET /api/v1/targets`, `POST /api/v1/targets/{id}/pause|resume`,
//! `GET /api/v1/stats`, `GET /api/v1/stats/stream` (SSE, one snapshot a
//! second) and `GET /metrics` (Prometheus text). All need the admin token
//! when one is configured, like the rest of the admin API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fanout_proto::api;

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
    /// Turns true when the gateway stops: stats streams end with a last
    /// `stopped` event (an open stream must never hold up the shutdown).
    pub stopped: tokio::sync::watch::Receiver<bool>,
    /// Whether the registry store answers (`None`: not known).
    pub store_reachable: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl DeliveryApi {
    fn stats(&self) -> api::Snapshot {
        let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
        let store = self.store_reachable.as_ref().map(|f| f());
        self.delivery
            .stats_snapshot(&self.gateway, self.health.is_ready(), draining, store)
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
    crate::admin::check_admin_token(api.token.as_ref(), request, next).await
}

async fn targets(
    State(api): State<DeliveryApi>,
    Query(page): Query<crate::admin::paging::Page>,
) -> Response {
    // The page is picked by id, endpoint and exports before any status is
    // built (a status reads the target's queue under its lock).
    let (handles, next) = page.select(
        api.delivery.targets(),
        |t| t.id(),
        |t| format!("{} {}", t.endpoint(), t.name()),
    );
    let snap = api.delivery.snapshot();
    Json(api::Items {
        items: handles.iter().map(|t| t.status(&snap)).collect(),
        next,
    })
    .into_response()
}

fn set_paused(api: &DeliveryApi, id: &str, paused: bool) -> Response {
    match api.delivery.target(id) {
        Some(t) => {
            t.set_paused(paused);
            tracing::info!(exports = %t.name(), target_id = %id, paused, "delivery: target paused state changed by the admin API");
            let snap = api.delivery.snapshot();
            Json(t.status(&snap)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(api::ErrorBody {
                error: format!("no target {id:?}"),
                problems: Vec::new(),
            }),
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

/// One `stats` event a second until the gateway stops; then one `stopped`
/// event, and the stream ends.
async fn stream(State(api): State<DeliveryApi>) -> impl IntoResponse {
    let ticks = tokio::time::interval(Duration::from_secs(1));
    let stop = api.stopped.clone();
    let events = futures::stream::unfold(Some((api, ticks, stop)), |state| async move {
        let (api, mut ticks, mut stop) = state?;
        let stopped = tokio::select! {
            stopped = stop.wait_for(|s| *s) => Some(stopped.is_ok()),
            _ = ticks.tick() => None,
        };
        let stopping = match stopped {
            Some(true) => true,
            // No one can stop it any more (tests): just tick.
            Some(false) => {
                ticks.tick().await;
                false
            }
            None => *stop.borrow(),
        };
        if stopping {
            let stopped = api::Stopped {
                reason: "the gateway is shutting down".into(),
            };
            let event = Event::default()
                .event("stopped")
                .json_data(stopped)
                .unwrap_or_else(|_| Event::default().event("stopped"));
            return Some((Ok::<_, Infallible>(event), None));
        }
        let event = Event::default()
            .event("stats")
            .json_data(api.stats())
            .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
        Some((Ok(event), Some((api, ticks, stop))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{MemoryBudget, Settings};
    use crate::registry::{ops, Document, Registry, Snapshot};
    use arc_swap::ArcSwap;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    fn api() -> DeliveryApi {
        let yaml = "clusters:\n  - {id: c1, organizationId: o1, cloudProvider: aws, cloudRegion: r, ingestToken: tok}\n\
            workspaces:\n  - {id: ws, organizationId: o2, name: w}\n\
            deployments:\n  - {id: d1, workspaceId: ws, clusterId: c1, namespace: ns, type: HOSTED, name: d}\n\
            metricsExports:\n  - {id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://127.0.0.1:1/api/v1/write', authType: AUTH_TOKEN, basicToken: very-secret}}\n";
        let mut registry = Registry::default();
        ops::replace_all(
            &mut registry,
            Document::parse(yaml.as_bytes(), true).unwrap(),
        )
        .unwrap();
        let snap = Snapshot::build(Arc::new(registry), 3, Arc::from(&b"s"[..]));
        let delivery = FanoutDelivery::new(
            Arc::new(ArcSwap::from_pointee(snap)),
            MemoryBudget::new(1 << 20),
            Settings::default(),
        );
        delivery.sync_now();
        DeliveryApi {
            delivery,
            health: Arc::new(Health::default()),
            token: Some(Secret::new("admin-t")),
            metrics: None,
            gateway: "host:9556".into(),
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stopped: tokio::sync::watch::channel(false).1,
            store_reachable: None,
        }
    }

    async fn call(router: &Router, method: &str, path: &str, token: bool) -> (StatusCode, Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if token {
            req = req.header("authorization", "Bearer admin-t");
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[tokio::test]
    async fn deliver_api_stats_and_targets_follow_the_contract() {
        let router = routes(api());
        let (status, _) = call(&router, "GET", "/api/v1/stats", false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, s) = call(&router, "GET", "/api/v1/stats", true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            keys(&s),
            [
                "configVersion",
                "deployments",
                "draining",
                "drops",
                "gateway",
                "ingest",
                "orphanBacklogs",
                "out",
                "ready",
                "recentErrors",
                "targets",
                "time",
                "uptimeSeconds"
            ]
        );
        assert_eq!(s["configVersion"], 3);
        assert_eq!(s["gateway"], "host:9556");
        assert_eq!(
            keys(&s["ingest"]),
            [
                "bytes",
                "inFlightBytes",
                "memoryBudgetBytes",
                "requests",
                "samples",
                "series"
            ]
        );
        assert_eq!(keys(&s["ingest"]["requests"]), ["h2", "h3", "http1"]);
        assert_eq!(
            keys(&s["drops"]),
            [
                "disk_full",
                "filtered",
                "foreign",
                "queue_full",
                "rejected",
                "series_limit",
                "unattributed"
            ]
        );
        assert!(s["time"].as_str().unwrap().ends_with('Z'));
        // d1 and its one export, nothing sent yet (the targets start on the
        // first registry sync, which this test does not run: no status).
        let d = &s["deployments"][0];
        assert_eq!(
            (&d["id"], &d["clusterId"], &d["exports"]),
            (&"d1".into(), &"c1".into(), &1.into()),
            "{s}"
        );
        let t = &s["targets"][0];
        assert_eq!(
            keys(t),
            [
                "bytesSent",
                "concurrency",
                "dropped",
                "endpoint",
                "failures",
                "feeds",
                "id",
                "inFlight",
                "lastError",
                "latencyMs",
                "oldestQueuedSeconds",
                "paused",
                "probes",
                "protocol",
                "queueBytes",
                "queueSamples",
                "requestsSent",
                "retries",
                "samplesSent",
                "spillBytes",
                "spillState",
                "state"
            ]
        );
        // Nothing was sent to it yet.
        assert_eq!(t["state"], "idle");
        assert_eq!(t["lastError"], Value::Null);
        assert_eq!(keys(&t["latencyMs"]), ["max", "p50", "p90", "p99"]);
        assert_eq!(keys(&t["dropped"]), ["disk_full", "queue_full", "rejected"]);
        assert_eq!(
            t["feeds"],
            serde_json::json!([{"exportId": "e1", "deploymentId": "d1", "clusterId": "c1"}])
        );
        assert!(!s.to_string().contains("very-secret"));

        let (status, items) = call(&router, "GET", "/api/v1/targets", true).await;
        assert_eq!(status, StatusCode::OK);
        let id = items["items"][0]["id"].as_str().unwrap().to_owned();
        let (status, t) = call(
            &router,
            "POST",
            &format!("/api/v1/targets/{id}/pause"),
            true,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (t["state"].as_str(), t["paused"].as_bool()),
            (Some("paused"), Some(true))
        );
        let (_, t) = call(
            &router,
            "POST",
            &format!("/api/v1/targets/{id}/resume"),
            true,
        )
        .await;
        assert_eq!(t["state"], "idle");
        let (status, e) = call(&router, "POST", "/api/v1/targets/none/pause", true).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(e["error"].as_str().unwrap().contains("none"));
    }

    /// `GET /api/v1/stats/stream` with the admin token.
    async fn open_stream(router: Router) -> axum::response::Response {
        router
            .oneshot(
                axum::http::Request::get("/api/v1/stats/stream")
                    .header("authorization", "Bearer admin-t")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    }

    /// An open stats stream ends when the gateway stops, with a last
    /// `stopped` event, so it never holds up the admin server's shutdown.
    #[tokio::test]
    async fn deliver_api_stream_ends_with_a_stopped_event() {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let resp = open_stream(routes(DeliveryApi { stopped, ..api() })).await;
        let mut body = resp.into_body();
        let mut text = String::new();
        let mut sent = false;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("the stream goes on or ends, never hangs");
            let Some(frame) = frame else { break };
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
            if !sent && text.contains("event: stats") {
                stop.send(true).unwrap();
                sent = true;
            }
        }
        assert!(sent, "{text}");
        assert!(
            text.trim_end()
                .ends_with(r#"data: {"reason":"the gateway is shutting down"}"#),
            "{text}"
        );
        assert!(text.contains("event: stopped"), "{text}");
    }

    #[tokio::test]
    async fn deliver_api_stream_sends_stats_events() {
        let resp = open_stream(routes(api())).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let mut text = String::new();
        while !text.contains("\n\n") {
            let frame = tokio::time::timeout(Duration::from_secs(3), body.frame())
                .await
                .expect("an event within 3s")
                .unwrap()
                .unwrap();
            if let Some(d) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(d));
            }
        }
        assert!(text.starts_with("event: stats\ndata: {"), "{text}");
        let data = text.lines().nth(1).unwrap().trim_start_matches("data: ");
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["configVersion"], 3);
    }
}
