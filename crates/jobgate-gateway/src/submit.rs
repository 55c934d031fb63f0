//! Submitting a job, shared by `POST /v1/jobs`, the WebSocket `submit`
//! message and the old `POST /submit`.

use jobgate_proto::{ErrorCode, JobId, SubmitRequest};
use jobgate_store::{NewJob, TraceContext};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// A job that was accepted.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub job_id: JobId,
    pub trace_id: String,
}

/// Validates, routes and enqueues one job under `job_id`.
pub(crate) async fn submit(
    state: &AppState,
    principal: &Principal,
    job_id: JobId,
    request: SubmitRequest,
    trace: TraceContext,
    legacy_trace_id: Option<String>,
) -> Result<Accepted, ApiError> {
    request
        .validate()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let queue = state.store.route(&request.kind).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownKind,
            format!("no worker has registered the job kind {:?}", request.kind),
        )
    })?;
    let trace_id = trace.trace_id.clone();
    let job = NewJob {
        job_id,
        owner: principal.owner.clone(),
        request,
        queue,
        trace,
        legacy_trace_id,
    };
    state.store.submit(&job).await?;
    tracing::info!(job_id = %job_id, trace_id = %trace_id, kind = %job.request.kind, queue = %job.queue, "job submitted");
    Ok(Accepted { job_id, trace_id })
}
