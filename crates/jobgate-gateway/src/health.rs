//! The operator's routes: liveness, readiness, `/metrics` (figures kept by
//! [`crate::metrics::Metrics`]) and the API's own description.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use jobgate_proto::ErrorCode;
use serde_json::json;

use crate::state::AppState;

/// The OpenAPI document of the REST API, served verbatim.
const OPENAPI: &str = include_str!("../../../proto-schemas/openapi.json");

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Redis answers and the pub/sub link is up: the gateway can take jobs and
/// deliver their events.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let redis = state.store.ping().await.is_ok();
    let pubsub = state.hub.is_connected();
    let shutting_down = state.shutdown.is_cancelled();
    let body = json!({
        "status": if redis && pubsub && !shutting_down { "ready" } else { "unready" },
        "redis": redis,
        "pubsub": pubsub,
        "shutting_down": shutting_down,
    });
    if redis && pubsub && !shutting_down {
        (StatusCode::OK, axum::Json(body))
    } else {
        let code = if shutting_down {
            ErrorCode::ShuttingDown
        } else {
            ErrorCode::RedisUnavailable
        };
        let mut body = body;
        body["code"] = json!(code.as_str());
        body["message"] = json!("the gateway cannot serve jobs right now");
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    }
}

/// Prometheus text: the gateway's counters and, read now, the queues.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let queues = match state.store.queue_stats().await {
        Ok(queues) => queues,
        Err(error) => {
            tracing::warn!(%error, "queue figures unavailable for /metrics");
            Vec::new()
        }
    };
    let mut out = String::with_capacity(4096);
    state.metrics.render(&mut out, &queues);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
