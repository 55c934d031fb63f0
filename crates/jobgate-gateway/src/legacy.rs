//! The old polling API, answering exactly as the old service did:
//! `POST /submit` → `{"job_id"}`, `GET /status/{job_id}` →
//! `{"status": "pending"|"processing"|"complete"|"failed", "result": …}`.
//!
//! `computation_params` comes as an object or as a string (what the old
//! SwiftUI client sends: a JSON object's text, with string values). A string
//! holding a JSON object is read as that object; any other string goes, as it
//! is, to the configured legacy kind as `{"computation_params": "<text>"}`,
//! whose handler decides (the pricing worker fails it with `invalid_params`).

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use jobgate_proto::legacy::{
    LEGACY_TEXT_FIELD, LegacyStatus, LegacyStatusResponse, LegacySubmitRequest,
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
    let (kind, params) = job_params(body.computation_params.get(), &state.config.legacy_kind)?;
    let params = RawValue::from_string(serde_json::Value::Object(params).to_string())
        .map_err(|_| invalid("computation_params must be a JSON object"))?;
    let request = SubmitRequest {
        kind,
        params,
        priority: None,
        max_attempts: None,
        timeout_s: None,
        delay_ms: None,
        run_at: None,
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
        check_params: false,
    };
    let accepted = submit::submit(&state, &principal, submission).await?;
    Ok(axum::Json(LegacySubmitResponse {
        job_id: accepted.job_id,
    }))
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

type Params = serde_json::Map<String, serde_json::Value>;

/// The kind and params of an old-API job: from an object, or a string
/// holding one (its `kind`, when present, picks the kind; else
/// `legacy_kind`), or any other string as `{"computation_params": text}`
/// for `legacy_kind`.
fn job_params(computation_params: &str, legacy_kind: &str) -> Result<(String, Params), ApiError> {
    let mut params: Params = match serde_json::from_str::<serde_json::Value>(computation_params) {
        Ok(serde_json::Value::Object(params)) => params,
        Ok(serde_json::Value::String(text)) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(params)) => params,
            _ => {
                let params = Params::from_iter([(
                    LEGACY_TEXT_FIELD.to_owned(),
                    serde_json::Value::String(text),
                )]);
                return Ok((legacy_kind.to_owned(), params));
            }
        },
        _ => {
            return Err(invalid(
                "computation_params must be a JSON object, or a string",
            ));
        }
    };
    let kind = match params.remove("kind") {
        None => legacy_kind.to_owned(),
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => return Err(invalid("computation_params.kind must be a string")),
    };
    Ok((kind, params))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(body: serde_json::Value) -> Result<(String, serde_json::Value), ErrorCode> {
        job_params(&body.to_string(), "pricing")
            .map(|(kind, params)| (kind, serde_json::Value::Object(params)))
            .map_err(|error| error.code)
    }

    #[test]
    fn an_object_and_its_text_are_the_same_params() {
        let object = json!({"spot": "100", "strike": "105"});
        let expected = Ok(("pricing".to_owned(), object.clone()));
        assert_eq!(read(object.clone()), expected);
        assert_eq!(read(json!(object.to_string())), expected);
        let with_kind = json!({"kind": "echo", "x": 1});
        let expected = Ok(("echo".to_owned(), json!({"x": 1})));
        assert_eq!(read(with_kind.clone()), expected);
        assert_eq!(read(json!(with_kind.to_string())), expected);
    }

    #[test]
    fn other_text_goes_to_the_legacy_kind_as_it_came() {
        for text in ["spot=100&strike=105", "[1,2]", "42", "", "{\"kind\":"] {
            assert_eq!(
                read(json!(text)),
                Ok(("pricing".to_owned(), json!({"computation_params": text}))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn neither_object_nor_string_is_refused() {
        for body in [json!(5), json!([1]), json!(null), json!({"kind": 7})] {
            assert_eq!(read(body.clone()), Err(ErrorCode::InvalidRequest), "{body}");
        }
    }
}
