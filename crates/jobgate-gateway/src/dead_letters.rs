//! `/v1/admin/dead-letters`: the jobs that ran out of attempts, for
//! operators (the `jobgate:admin` scope, [`Admin`]): list, show, re-run one
//! or many, purge one or all. They see every owner's jobs.
//!
//! A re-run is the store's `retry_dead_letter` (`revive`, then `requeue`);
//! a watcher whose stream ended at the `failed` event subscribes again with
//! `after=<its last seq>` and sees the `retrying` event and the new attempt.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jobgate_proto::{ErrorCode, JobSnapshot};
use jobgate_store::{DeadLetter, DeadLetterPage, RetryOutcome};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{Admin, JobPath, Json, Query};
use crate::state::AppState;

/// The most dead letters one page, or one bulk re-run, takes.
const MAX_LIMIT: usize = 1000;
/// A page's (and a bulk re-run's) size when the request names none.
const DEFAULT_LIMIT: usize = 100;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/dead-letters", get(list))
        .route("/v1/admin/dead-letters/retry", post(retry_many))
        .route("/v1/admin/dead-letters/purge", post(purge))
        .route("/v1/admin/dead-letters/{id}", get(show).delete(remove))
        .route("/v1/admin/dead-letters/{id}/retry", post(retry_one))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    queue: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Body of the bulk re-run and of purge: a queue (default every queue) and,
/// for the re-run, how many at most.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    queue: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Shown {
    dead_letter: DeadLetter,
    /// The job's snapshot; `null` once its record expired.
    job: Option<JobSnapshot>,
}

#[derive(Debug, Serialize)]
struct Retried {
    job_id: String,
    /// `requeued`, `not_found`, `record_expired` or `not_retryable`.
    outcome: &'static str,
}

#[derive(Debug, Serialize)]
struct RetriedMany {
    results: Vec<Retried>,
}

#[derive(Debug, Serialize)]
struct Purged {
    purged: u64,
}

async fn list(
    State(state): State<AppState>,
    Admin(_): Admin,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let queue = valid_queue(query.queue.as_deref())?;
    let limit = valid_limit(query.limit)?;
    let cursor = query
        .cursor
        .as_deref()
        .map(jobgate_store::parse_cursor)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    Ok(axum::Json(
        state.store.dead_letters(queue, limit, cursor).await?,
    ))
}

async fn show(
    State(state): State<AppState>,
    Admin(_): Admin,
    JobPath(job_id): JobPath,
) -> Result<axum::Json<Shown>, ApiError> {
    let dead_letter = state
        .store
        .dead_letter(&job_id)
        .await?
        .ok_or_else(no_dead_letter)?;
    let job = state.store.record(&job_id).await?.map(|r| r.snapshot);
    Ok(axum::Json(Shown { dead_letter, job }))
}

async fn retry_one(
    State(state): State<AppState>,
    Admin(admin): Admin,
    JobPath(job_id): JobPath,
) -> Result<impl IntoResponse, ApiError> {
    match state.store.retry_dead_letter(&job_id, &admin.owner).await? {
        RetryOutcome::Requeued => {}
        RetryOutcome::NotFound => return Err(no_dead_letter()),
        RetryOutcome::RecordExpired => {
            return Err(ApiError::new(
                ErrorCode::HistoryExpired,
                "the job's record expired: there is nothing to re-run",
            ));
        }
        RetryOutcome::NotRetryable(status) => {
            return Err(ApiError::new(
                ErrorCode::NotRetryable,
                format!("the job is {status}, not failed"),
            ));
        }
    }
    let job = state.store.record(&job_id).await?.map(|r| r.snapshot);
    Ok((StatusCode::ACCEPTED, axum::Json(job)))
}

async fn retry_many(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Json(selection): Json<Selection>,
) -> Result<axum::Json<RetriedMany>, ApiError> {
    let queue = valid_queue(selection.queue.as_deref())?;
    let limit = valid_limit(selection.limit)?;
    let outcomes = state
        .store
        .retry_dead_letters(queue, limit, &admin.owner)
        .await?;
    let results = outcomes
        .into_iter()
        .map(|(job_id, outcome)| Retried {
            job_id,
            outcome: match outcome {
                RetryOutcome::Requeued => "requeued",
                RetryOutcome::NotFound => "not_found",
                RetryOutcome::RecordExpired => "record_expired",
                RetryOutcome::NotRetryable(_) => "not_retryable",
            },
        })
        .collect();
    Ok(axum::Json(RetriedMany { results }))
}

async fn remove(
    State(state): State<AppState>,
    Admin(_): Admin,
    JobPath(job_id): JobPath,
) -> Result<StatusCode, ApiError> {
    if state.store.remove_dead_letter(&job_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_dead_letter())
    }
}

async fn purge(
    State(state): State<AppState>,
    Admin(_): Admin,
    Json(selection): Json<Selection>,
) -> Result<axum::Json<Purged>, ApiError> {
    if selection.limit.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "purge takes no limit: it removes every dead letter of the queue",
        ));
    }
    let queue = valid_queue(selection.queue.as_deref())?;
    let purged = state.store.purge_dead_letters(queue).await?;
    Ok(axum::Json(Purged { purged }))
}

fn no_dead_letter() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no dead letter for this job")
}

/// A queue name as workers register it (it sits inside a hash tag).
fn valid_queue(queue: Option<&str>) -> Result<Option<&str>, ApiError> {
    let valid = |q: &str| {
        (1..=128).contains(&q.len())
            && q.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    };
    match queue {
        Some(q) if !valid(q) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "queue is 1-128 characters of A-Z, a-z, 0-9, _ . : -",
        )),
        other => Ok(other),
    }
}

fn valid_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit is 1-{MAX_LIMIT}"),
        )),
    }
}
