//! Submitting a job, shared by `POST /v1/jobs`, the WebSocket `submit`
//! message and the old `POST /submit`: validation, routing by kind, the
//! params against the kind's registered schema, admission (queue length),
//! idempotency, enqueueing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobgate_proto::batch::BatchItem;
use jobgate_proto::{ErrorBody, ErrorCode, JobId, JobStatus, ParamsSchema, SubmitRequest};
use jobgate_store::{IdempotencyClaim, NewJob, SubmitRate, Submitted};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::Instrument;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// How stale the queue length used for admission may be.
const QUEUE_LENGTH_MAX_AGE: Duration = Duration::from_millis(250);
/// The longest idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A job that was accepted.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) job_id: JobId,
    pub(crate) trace_id: String,
    /// The job existed already: the same idempotency key and request.
    pub(crate) replayed: bool,
}

/// One submission.
#[derive(Debug)]
pub(crate) struct Submission {
    /// The id the job gets if it is created.
    pub(crate) job_id: JobId,
    pub(crate) request: SubmitRequest,
    /// The client's `traceparent` (already the parent of the current span
    /// when spans are on) and `tracestate`, carried with the job.
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) legacy_trace_id: Option<String>,
    /// Check the params against the kind's registered schema. The old API
    /// does not: its clients learn of bad params from the job's failure,
    /// as they always did.
    pub(crate) check_params: bool,
}

impl Submission {
    /// A job of a `submit_batch` (WebSocket or HTTP): its params are checked.
    pub(crate) fn of_item(job_id: JobId, item: BatchItem) -> Self {
        Self {
            job_id,
            request: item.job,
            traceparent: item.traceparent,
            tracestate: item.tracestate,
            idempotency_key: item.idempotency_key,
            legacy_trace_id: None,
            check_params: true,
        }
    }
}

/// The status to answer a replayed submission with: the job's status now
/// (an earlier submit with its key created it), `queued` when its record
/// cannot be read — the job exists either way.
pub(crate) async fn replayed_status(state: &AppState, job_id: &JobId) -> JobStatus {
    match state.store.record(job_id).await {
        Ok(Some(record)) => record.snapshot.status,
        _ => JobStatus::Queued,
    }
}

/// Validates, routes, admits and enqueues one job. With an idempotency key
/// already used by this owner for the same request, creates nothing and
/// answers the existing job; for a different request, `idempotency_conflict`.
///
/// The work runs in a task of its own, in the caller's span: a caller that
/// goes away (a client that disconnects drops its request's future) cannot
/// stop a submission between two of its writes — after the idempotency key
/// is claimed or the record created, before the job is enqueued.
pub(crate) async fn submit(
    state: &AppState,
    principal: &Principal,
    submission: Submission,
) -> Result<Accepted, ApiError> {
    let state = state.clone();
    let principal = principal.clone();
    let work = async move { run(&state, &principal, submission).await };
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Internal,
                "the submission failed unexpectedly",
            ))
        })
}

/// A batch job's turn with its idempotency key: the first job of a batch
/// that names a key holds it until its submission is done; a later job of
/// the same batch with that key waits for it, so the earlier one creates the
/// job and the later one answers it (or `idempotency_conflict`). A job
/// alone, or with a key of its own, has a free turn.
#[derive(Default)]
pub(crate) struct Turn {
    hold: Option<OwnedMutexGuard<()>>,
    wait_for: Option<Arc<Mutex<()>>>,
}

/// A batch's jobs, each read on its own (a bad one refuses only itself),
/// with its turn: a job whose idempotency key an earlier job of the batch
/// has waits for that one, so the earlier one creates the job.
pub(crate) fn batch_items(jobs: &[Box<RawValue>]) -> Vec<(Result<BatchItem, ErrorBody>, Turn)> {
    let items: Vec<_> = jobs.iter().map(|raw| BatchItem::parse(raw)).collect();
    let turns = turns(items.iter().map(|item| {
        item.as_ref()
            .ok()
            .and_then(|item| item.idempotency_key.as_deref())
    }));
    items.into_iter().zip(turns).collect()
}

/// The turns of a batch's jobs, given each job's idempotency key.
fn turns<'a>(keys: impl Iterator<Item = Option<&'a str>>) -> Vec<Turn> {
    let mut first_of_key: HashMap<&str, Arc<Mutex<()>>> = HashMap::new();
    keys.map(|key| {
        let Some(key) = key else {
            return Turn::default();
        };
        match first_of_key.get(key) {
            Some(earlier) => Turn {
                hold: None,
                wait_for: Some(Arc::clone(earlier)),
            },
            None => {
                let lock = Arc::new(Mutex::new(()));
                let hold = Arc::clone(&lock).try_lock_owned().ok();
                first_of_key.insert(key, lock);
                Turn {
                    hold,
                    wait_for: None,
                }
            }
        }
    })
    .collect()
}

/// [`submit`] once `turn` comes.
pub(crate) async fn submit_in_turn(
    state: &AppState,
    principal: &Principal,
    submission: Submission,
    turn: Turn,
) -> Result<Accepted, ApiError> {
    let Turn { hold, wait_for } = turn;
    if let Some(earlier) = wait_for {
        drop(earlier.lock().await);
    }
    let result = submit(state, principal, submission).await;
    drop(hold);
    result
}

async fn run(
    state: &AppState,
    principal: &Principal,
    submission: Submission,
) -> Result<Accepted, ApiError> {
    let Submission {
        job_id,
        request,
        traceparent,
        tracestate,
        idempotency_key,
        legacy_trace_id,
        check_params,
    } = submission;
    request
        .validate()
        .and_then(|()| request.validate_run_at(unix_ms()))
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    check_limits(state, &request)?;
    if let Some(key) = &idempotency_key {
        validate_idempotency_key(key)?;
    }
    let route = state.store.route(&request.kind).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownKind,
            format!("no worker has registered the job kind {:?}", request.kind),
        )
    })?;
    if check_params && let Some(schema) = &route.params_schema {
        check_params_schema(schema, &request)?;
    }
    let queue = route.queue;
    let limit = state.config.max_queue_length;
    if limit > 0
        && state
            .store
            .queue_length(&queue, QUEUE_LENGTH_MAX_AGE)
            .await?
            >= limit
    {
        return Err(ApiError::new(
            ErrorCode::QueueFull,
            format!("the queue {queue:?} holds {limit} jobs or more; retry later"),
        ));
    }
    // The producer span: the job's traceparent names it, so the worker's
    // consumer span is its child.
    let (producer, trace) = crate::trace::producer_span(
        &queue,
        &request,
        &job_id,
        legacy_trace_id.as_deref(),
        traceparent.as_deref(),
        tracestate.as_deref(),
    );
    if let Some(key) = &idempotency_key {
        let fingerprint = fingerprint(&request);
        let claim = state
            .store
            .claim_idempotency(
                &principal.owner,
                key,
                job_id,
                &fingerprint,
                &trace.trace_id,
                Duration::from_secs(state.config.idempotency_ttl_s),
            )
            .await?;
        if let IdempotencyClaim::Existing {
            job_id,
            fingerprint: earlier,
            trace_id,
        } = claim
        {
            if earlier != fingerprint {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    "this idempotency key was used for a different request",
                ));
            }
            tracing::info!(job_id = %job_id, trace_id = %trace_id, "idempotent resubmission");
            return Ok(Accepted {
                job_id,
                trace_id,
                replayed: true,
            });
        }
    }
    let trace_id = trace.trace_id.clone();
    let job = NewJob {
        job_id,
        owner: principal.owner.clone(),
        request,
        queue,
        trace,
        legacy_trace_id,
    };
    // The owner's rate is counted with the submission itself (by the
    // batcher, `submit_rate`), once the request is known to be acceptable:
    // bad input changes nothing.
    let per_minute = state.config.submits_per_minute;
    let (kind, queue) = (job.request.kind.clone(), job.queue.clone());
    let refused = match state.batcher.submit(job).instrument(producer.clone()).await {
        Ok(Submitted::Created) => None,
        Ok(Submitted::RateLimited { retry_after_s }) => Some(
            ApiError::new(
                ErrorCode::RateLimited,
                format!("at most {per_minute} submissions a minute"),
            )
            .retry_after(retry_after_s),
        ),
        Err(error) => Some(error.into()),
    };
    if let Some(error) = refused {
        if let Some(key) = &idempotency_key
            && let Err(release) = state.store.release_idempotency(&principal.owner, key).await
        {
            tracing::warn!(error = %release, job_id = %job_id, "could not free an idempotency key");
        }
        return Err(error);
    }
    state.metrics.submitted(&kind);
    producer.in_scope(|| tracing::info!(kind = %kind, queue = %queue, "job submitted"));
    Ok(Accepted {
        job_id,
        trace_id,
        replayed: false,
    })
}

/// The owner's rate the batcher counts each job against (`None`: no limit).
pub(crate) fn submit_rate(config: &crate::config::Config) -> Option<SubmitRate> {
    (config.submits_per_minute > 0).then_some(SubmitRate {
        limit: config.submits_per_minute,
        window: Duration::from_secs(60),
    })
}

/// The configured limits on a request's content: params size and nesting,
/// and the allow-list of kinds.
fn check_limits(state: &AppState, request: &SubmitRequest) -> Result<(), ApiError> {
    let config = &state.config;
    let params = request.params.get();
    if params.len() > config.max_params_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("params is over {} bytes", config.max_params_bytes),
        ));
    }
    if crate::limits::json_depth(params) > config.max_json_depth {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("params nests deeper than {} levels", config.max_json_depth),
        ));
    }
    if !config.allowed_kinds.is_empty() && !config.allowed_kinds.contains(&request.kind) {
        return Err(ApiError::new(
            ErrorCode::UnknownKind,
            format!("the job kind {:?} is not accepted here", request.kind),
        ));
    }
    Ok(())
}

/// `invalid_params` naming the first field of `request`'s params that breaks
/// its kind's schema.
fn check_params_schema(schema: &ParamsSchema, request: &SubmitRequest) -> Result<(), ApiError> {
    let params: serde_json::Value = serde_json::from_str(request.params.get())
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("params: {e}")))?;
    schema.validate(&params).map_err(|error| ApiError {
        field: Some(error.field),
        ..ApiError::new(ErrorCode::InvalidParams, error.message)
    })
}

/// The gateway's clock, ms since the epoch: only to bound `run_at` (the
/// due time itself is kept by Redis's clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn validate_idempotency_key(key: &str) -> Result<(), ApiError> {
    let printable = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !printable {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "an idempotency key is 1 to 255 printable ASCII characters",
        ));
    }
    Ok(())
}

/// What makes two submissions "the same request": kind, params (compared
/// as JSON values, so spacing and key order do not matter) and options.
fn fingerprint(request: &SubmitRequest) -> String {
    let params: serde_json::Value =
        serde_json::from_str(request.params.get()).unwrap_or(serde_json::Value::Null);
    let mut canonical = serde_json::json!({
        "kind": request.kind,
        "params": params,
        "priority": request.priority(),
        "max_attempts": request.max_attempts(),
        "timeout_s": request.timeout_s(),
    });
    // Only when given, so fingerprints of requests without them stay as before.
    for (name, value) in [("delay_ms", request.delay_ms), ("run_at", request.run_at)] {
        if let Some(value) = value {
            canonical[name] = value.into();
        }
    }
    let mut text = String::new();
    write_canonical(&canonical, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON text with object keys sorted at every depth.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_job_with_a_key_waits_for_the_first() {
        let turns = turns([Some("a"), None, Some("a"), Some("b")].into_iter());
        assert!(turns[0].hold.is_some() && turns[0].wait_for.is_none());
        assert!(turns[1].hold.is_none() && turns[1].wait_for.is_none());
        assert!(turns[2].wait_for.is_some());
        assert!(turns[3].hold.is_some() && turns[3].wait_for.is_none());
        let waiting = turns[2].wait_for.clone().expect("waits");
        assert!(waiting.try_lock().is_err(), "held by the first");
        drop(turns);
        assert!(waiting.try_lock().is_ok(), "free once the first is done");
    }

    fn request(json: &str) -> SubmitRequest {
        serde_json::from_str(json).expect("request")
    }

    #[test]
    fn the_same_request_spelled_differently_has_one_fingerprint() {
        let a = request(r#"{"kind":"k","params":{"a":1,"b":{"y":2,"x":[1,2]}}}"#);
        let b = request(
            r#"{ "params": {"b": {"x": [1, 2], "y": 2}, "a": 1}, "kind": "k", "priority": 5 }"#,
        );
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = request(r#"{"kind":"k","params":{"a":2,"b":{"y":2,"x":[1,2]}}}"#);
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
