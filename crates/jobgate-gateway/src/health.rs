//! The operator's routes: liveness, readiness, `/metrics` (figures kept by
//! [`crate::metrics::Metrics`]) and the API's own description.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use jobgate_proto::ErrorCode;
use jobgate_store::{OutcomeTotals, RedisMode};
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
///
/// On a Redis Cluster, Redis "answers" while any node does: one node is
/// asked `CLUSTER INFO` and `CLUSTER NODES`, and the answer reports the
/// cluster's state and every node's (the failing ones listed), so that a
/// shard failing over makes the jobs of its slots fail for a few seconds
/// but no gateway unready. Likewise the cluster is out of memory only when
/// every master is at its `maxmemory`.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.store.redis_status().await;
    let redis = status.is_ok();
    let status = status.ok();
    let cluster = status
        .as_ref()
        .is_some_and(|s| s.mode == Some(RedisMode::Cluster));
    let out_of_memory = redis && redis_out_of_memory(&state, cluster).await;
    let pubsub = state.hub.is_connected();
    let shutting_down = state.shutdown.is_cancelled();
    let ready = redis && !out_of_memory && pubsub && !shutting_down;
    let mode = status
        .as_ref()
        .and_then(|s| s.mode)
        .or_else(|| state.store.redis_mode());
    let mut body = json!({
        "status": if ready { "ready" } else { "unready" },
        "redis": redis,
        "redis_out_of_memory": out_of_memory,
        "pubsub": pubsub,
        "shutting_down": shutting_down,
        "redis_mode": mode.map(RedisMode::as_str),
    });
    if let Some(status) = status.filter(|_| cluster) {
        let failing: Vec<&str> = status
            .nodes
            .iter()
            .filter(|node| node.is_failing())
            .map(|node| node.address.as_str())
            .collect();
        body["cluster"] = json!({
            "state": status.cluster_state,
            "nodes": status.nodes,
            "failing_nodes": failing,
        });
    }
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
        body["code"] = json!(code.as_str());
        body["message"] = json!("the gateway cannot serve jobs right now");
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    }
}

/// Redis refuses writes for lack of memory (see [`readyz`]): on a single
/// server, a recent `OOM` refusal or `INFO memory` at the limit; on a
/// cluster, every master at its limit.
async fn redis_out_of_memory(state: &AppState, cluster: bool) -> bool {
    if !cluster && state.store.health().recently_out_of_memory() {
        return true;
    }
    match state.store.memory_by_node().await {
        Ok(nodes) => !nodes.is_empty() && nodes.iter().all(|(_, memory)| memory.is_full()),
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
    let names: Vec<String> = queues.iter().map(|(queue, ..)| queue.clone()).collect();
    let outcomes = match state.store.outcome_totals(&names).await {
        Ok(outcomes) => outcomes,
        Err(error) => {
            tracing::warn!(%error, "job outcome counts unavailable for /metrics");
            OutcomeTotals::default()
        }
    };
    let mut out = String::with_capacity(4096);
    state.metrics.render(&mut out, &queues, &outcomes);
    crate::metrics::render_redis(
        &mut out,
        state.store.health().oom_refusals(),
        memory.map(|m| (m.used_bytes, m.max_bytes)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
