//! The old polling API, answering exactly as the old service did:
//! `POST /submit` → `{"job_id"}`, `GET /status/{job_id}` →
//! `{"status": "pending"|"processing"|"complete"|"failed", "result": …}`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use jobgate_proto::legacy::{
    DEFAULT_LEGACY_KIND, LegacyStatus, LegacyStatusResponse, LegacySubmitRequest,
    LegacySubmitResponse,
};
use jobgate_proto::{ErrorCode, JobId, JobStatus, SubmitRequest};
use serde_json::value::RawValue;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JobPath, Json};
use crate::jobs;
use crate::state::AppState;
use crate::submit::{self, Submission};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/submit", post(submit_job))
        .route("/status/{job_id}", get(status))
}

async fn submit_job(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<LegacySubmitRequest>,
) -> Result<axum::Json<LegacySubmitResponse>, ApiError> {
    let invalid = |message: &str| ApiError::new(ErrorCode::InvalidRequest, message);
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(body.computation_params.get())
            .map_err(|_| invalid("computation_params must be a JSON object"))?;
    let kind = match params.remove("kind") {
        None => DEFAULT_LEGACY_KIND.to_owned(),
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => return Err(invalid("computation_params.kind must be a string")),
    };
    let params = RawValue::from_string(serde_json::Value::Object(params).to_string())
        .map_err(|_| invalid("computation_params must be a JSON object"))?;
    let request = SubmitRequest {
        kind,
        params,
        priority: None,
        max_attempts: None,
        timeout_s: None,
    };
    // The old clients' trace ids are free-form: kept as an attribute of the
    // job (and in logs), while the job gets a W3C trace of its own.
    let legacy_trace_id = body.trace_id.map(|id| id.chars().take(256).collect());
    let submission = Submission {
        job_id: JobId::new(),
        request,
        traceparent: None,
        tracestate: None,
        idempotency_key: None,
        legacy_trace_id,
    };
    let accepted = submit::submit(&state, &principal, submission).await?;
    Ok(axum::Json(LegacySubmitResponse {
        job_id: accepted.job_id,
    }))
}

async fn status(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(job_id): JobPath,
) -> Result<axum::Json<LegacyStatusResponse>, ApiError> {
    let snapshot = jobs::owned_record(&state, &principal, &job_id)
        .await?
        .snapshot;
    let result = match snapshot.status {
        JobStatus::Completed => snapshot.result,
        JobStatus::Failed | JobStatus::Cancelled => snapshot.error,
        JobStatus::Queued | JobStatus::Running => None,
    };
    Ok(axum::Json(LegacyStatusResponse {
        status: LegacyStatus::from(snapshot.status),
        result,
    }))
}
