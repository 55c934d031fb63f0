//! The operator's view of queues (admin scope): `GET /v1/admin/queues`
//! lists each queue's depth per band, oldest age, running entries, dead
//! letters, paused flag and workers; `GET /v1/admin/workers` every worker
//! across queues; `POST /v1/admin/queues/{queue}/pause` and
//! `/resume` stop and restart workers taking new entries from a queue.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jobgate_proto::ErrorCode;
use serde_json::json;
use tracing::info;

use crate::error::ApiError;
use crate::extract::Admin;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/queues", get(list))
        .route("/v1/admin/workers", get(workers))
        .route("/v1/admin/queues/{queue}/pause", post(pause))
        .route("/v1/admin/queues/{queue}/resume", post(resume))
}

async fn list(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let queues = state.store.queue_overviews().await?;
    Ok(axum::Json(json!({ "queues": queues })))
}

async fn workers(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let workers: Vec<_> = state
        .store
        .queue_overviews()
        .await?
        .into_iter()
        .flat_map(|queue| queue.workers)
        .collect();
    Ok(axum::Json(json!({ "workers": workers })))
}

async fn pause(
    Admin(principal): Admin,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_paused(&principal.owner, state, queue, true).await
}

async fn resume(
    Admin(principal): Admin,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_paused(&principal.owner, state, queue, false).await
}

async fn set_paused(
    admin: &str,
    state: AppState,
    queue: String,
    paused: bool,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    match state.store.set_paused(&queue, paused).await? {
        Some(paused) => {
            info!(queue = %queue, paused, admin, "queue pause flag set");
            Ok(axum::Json(json!({ "queue": queue, "paused": paused })))
        }
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "no worker serves this queue",
        )),
    }
}
