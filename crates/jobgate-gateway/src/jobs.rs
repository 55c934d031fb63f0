//! `/v1/jobs`: submit, snapshot, cancel.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jobgate_proto::{
    ErrorCode, JobId, JobLinks, JobSnapshot, JobStatus, SubmitRequest, SubmitResponse,
};
use jobgate_store::{CancelOutcome, JobRecord};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JobPath, Json};
use crate::state::AppState;
use crate::submit::{self, Submission};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(create))
        .route("/v1/jobs/{id}", get(snapshot))
        .route("/v1/jobs/{id}/cancel", post(cancel))
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Json(request): Json<SubmitRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map(str::to_owned).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be printable ASCII",
            )
        })?),
    };
    let submission = Submission {
        job_id: JobId::new(),
        request,
        traceparent: header("traceparent").map(str::to_owned),
        tracestate: header("tracestate").map(str::to_owned),
        idempotency_key,
        legacy_trace_id: None,
        check_params: true,
    };
    let accepted = submit::submit(&state, &principal, submission).await?;
    let status = if accepted.replayed {
        // An earlier submit with this key created the job: answer as then,
        // with the job's status now.
        submit::replayed_status(&state, &accepted.job_id).await
    } else {
        JobStatus::Queued
    };
    let body = SubmitResponse {
        job_id: accepted.job_id,
        status,
        trace_id: accepted.trace_id,
        links: JobLinks::for_job(accepted.job_id),
    };
    let location = body.links.this.clone();
    let replayed = if accepted.replayed { "true" } else { "false" };
    Ok((
        StatusCode::ACCEPTED,
        [
            ("location", location),
            ("idempotent-replayed", replayed.to_owned()),
        ],
        axum::Json(body),
    ))
}

/// The caller's job, or `not_found` — also when it is someone else's.
pub(crate) async fn owned_record(
    state: &AppState,
    principal: &Principal,
    job_id: &JobId,
) -> Result<JobRecord, ApiError> {
    match state.store.record(job_id).await? {
        Some(record) if principal.owns(&record.owner) => Ok(record),
        Some(_) => Err(ApiError::not_found()),
        None => Err(ApiError::missing_job(job_id, state.config.retention())),
    }
}

async fn snapshot(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(job_id): JobPath,
) -> Result<axum::Json<JobSnapshot>, ApiError> {
    Ok(axum::Json(
        owned_record(&state, &principal, &job_id).await?.snapshot,
    ))
}

async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(job_id): JobPath,
) -> Result<impl IntoResponse, ApiError> {
    cancel_job(&state, &principal, &job_id).await?;
    let record = owned_record(&state, &principal, &job_id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(record.snapshot)))
}

/// Cancels the caller's job: `not_found`, or `not_cancellable` when it
/// already ended.
pub(crate) async fn cancel_job(
    state: &AppState,
    principal: &Principal,
    job_id: &JobId,
) -> Result<CancelOutcome, ApiError> {
    owned_record(state, principal, job_id).await?;
    match state.store.cancel(job_id).await? {
        CancelOutcome::NotFound => Err(ApiError::not_found()),
        CancelOutcome::AlreadyTerminal => Err(ApiError::new(
            ErrorCode::NotCancellable,
            "the job has already ended",
        )),
        outcome => {
            tracing::info!(job_id = %job_id, ?outcome, "cancel requested");
            Ok(outcome)
        }
    }
}
