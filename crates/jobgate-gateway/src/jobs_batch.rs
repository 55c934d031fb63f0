//! `POST /v1/jobs/batch`: many submissions in one request, answered `207`
//! with one result per job (its `index`, the status a single `POST /v1/jobs`
//! would have had, and its body or error). Each job is submitted exactly as
//! a single one (validation, admission, its own idempotency key and trace
//! context, counted against the owner's rate); the jobs are created together
//! by the batcher. A bad batch (not `{"jobs": [...]}`, no jobs, more than
//! `JOBGATE_MAX_BATCH_JOBS`) is refused whole and changes nothing; a bad job
//! refuses only itself.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use futures_util::future::join_all;
use jobgate_proto::batch::{
    BatchResult, SubmitBatchRequest, SubmitBatchResponse, check_batch_size,
};
use jobgate_proto::{JobId, JobLinks, JobStatus, SubmitResponse};

use crate::auth::Principal;
use crate::error::{ApiError, status_for};
use crate::extract::Json;
use crate::state::AppState;
use crate::submit::{self, Submission};

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/jobs/batch", post(create_many))
}

async fn create_many(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<SubmitBatchRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_batch_size(request.jobs.len(), state.config.max_batch_jobs)?;
    let results = submit::batch_items(&request.jobs)
        .into_iter()
        .enumerate()
        .map(|(index, (item, turn))| {
            let (state, principal) = (&state, &principal);
            async move {
                let item = match item {
                    Ok(item) => item,
                    Err(error) => return refused(index, error.into()),
                };
                let submission = Submission::of_item(JobId::new(), item);
                match submit::submit_in_turn(state, principal, submission, turn).await {
                    Ok(accepted) => {
                        let status = if accepted.replayed {
                            submit::replayed_status(state, &accepted.job_id).await
                        } else {
                            JobStatus::Queued
                        };
                        let job = SubmitResponse {
                            job_id: accepted.job_id,
                            status,
                            trace_id: accepted.trace_id,
                            links: JobLinks::for_job(accepted.job_id),
                        };
                        BatchResult::accepted(index, job, accepted.replayed)
                    }
                    Err(error) => refused(index, error),
                }
            }
        });
    let results = join_all(results).await;
    Ok((
        StatusCode::MULTI_STATUS,
        axum::Json(SubmitBatchResponse { results }),
    ))
}

/// The status of a job an earlier submission with the same key created
/// (`queued` when it cannot be read now).
fn refused(index: usize, error: ApiError) -> BatchResult {
    let status = status_for(error.code).as_u16();
    let retry_after_s = error.retry_after_s;
    BatchResult::refused(index, status, error.body(), retry_after_s)
}
