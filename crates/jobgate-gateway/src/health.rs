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

/// Redis answers and has room for writes, and the pub/sub link is up: the
/// gateway can take jobs and deliver their events. Redis is out of memory
/// when `INFO memory` shows it at `maxmemory` or it refused a write for
/// lack of memory within the last few seconds.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let redis = state.store.ping().await.is_ok();
    let out_of_memory = redis && redis_out_of_memory(&state).await;
    let pubsub = state.hub.is_connected();
    let shutting_down = state.shutdown.is_cancelled();
    let ready = redis && !out_of_memory && pubsub && !shutting_down;
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "redis": redis,
        "redis_out_of_memory": out_of_memory,
        "pubsub": pubsub,
        "shutting_down": shutting_down,
    });
    if ready {
        (StatusCode::OK, axum::Json(body))
    } else {
        let code = if shutting_down {
            ErrorCode::ShuttingDown
        } else if out_of_memory {
            ErrorCode::RedisOutOfMemory
        } else {
            ErrorCode::RedisUnavailable
        };
        let mut body = body;
        body["code"] = json!(code.as_str());
        body["message"] = json!("the gateway cannot serve jobs right now");
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    }
}

/// Redis refuses writes for lack of memory (see [`readyz`]).
async fn redis_out_of_memory(state: &AppState) -> bool {
    if state.store.health().recently_out_of_memory() {
        return true;
    }
    match state.store.memory().await {
        Ok(memory) => memory.is_full(),
        Err(error) => {
            tracing::warn!(%error, "redis memory figures unavailable");
            false
        }
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
    let memory = match state.store.memory().await {
        Ok(memory) => Some(memory),
        Err(error) => {
            tracing::warn!(%error, "redis memory figures unavailable for /metrics");
            None
        }
    };
    let mut out = String::with_capacity(4096);
    state.metrics.render(&mut out, &queues);
    crate::metrics::render_redis(
        &mut out,
        state.store.health().oom_refusals(),
        memory.map(|m| (m.used_bytes, m.max_bytes)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
