//! Submitting many jobs at once: the WebSocket `submit_batch` frame and
//! `POST /v1/jobs/batch`. Both carry `jobs`, a list of [`BatchItem`]s, each
//! answered on its own (by its `index` in the list): one bad item refuses
//! only itself, so the items are kept as raw JSON until each is read with
//! [`BatchItem::parse`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ErrorBody, ErrorCode, SubmitRequest, SubmitResponse};

/// The default and usual largest number of jobs in one batch
/// (`JOBGATE_MAX_BATCH_JOBS`).
pub const DEFAULT_MAX_BATCH_JOBS: usize = 1000;

/// One job of a batch: what a single `submit` frame carries besides its
/// `type` and `request_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub job: SubmitRequest,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
}

impl BatchItem {
    /// Reads one item; a bad one is `invalid_request` (or `invalid_json`
    /// when it is not an object), with a message naming the field.
    pub fn parse(raw: &RawValue) -> Result<Self, ErrorBody> {
        if !raw.get().trim_start().starts_with('{') {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "each item of jobs must be an object {job, idempotency_key?, traceparent?, tracestate?}",
            ));
        }
        let item: Self = serde_json::from_str(raw.get())
            .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()))?;
        item.job
            .validate()
            .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, format!("job.{e}")))?;
        Ok(item)
    }
}

/// `{"type":"submit_batch","request_id":…,"jobs":[…]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatchFrame {
    #[serde(rename = "type")]
    _type: String,
    pub request_id: String,
    pub jobs: Vec<Box<RawValue>>,
}

/// The body of `POST /v1/jobs/batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatchRequest {
    pub jobs: Vec<Box<RawValue>>,
}

/// Why a whole batch is refused (nothing is created): no jobs, or more than
/// `max`.
pub fn check_batch_size(jobs: usize, max: usize) -> Result<(), ErrorBody> {
    if jobs == 0 || jobs > max {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            format!("a batch holds 1 to {max} jobs; this one holds {jobs}"),
        ));
    }
    Ok(())
}

/// `207` answer to `POST /v1/jobs/batch`: one result per job, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitBatchResponse {
    pub results: Vec<BatchResult>,
}

/// One job's answer: the HTTP status a single `POST /v1/jobs` would have
/// had, and its `202` body or its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub index: usize,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<SubmitResponse>,
    /// The job existed already: an earlier submission with its idempotency
    /// key (the `Idempotent-Replayed` header of a single submit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// With `rate_limited`: when to try again (the `Retry-After` header of a
    /// single submit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl BatchResult {
    pub fn accepted(index: usize, job: SubmitResponse, replayed: bool) -> Self {
        Self {
            index,
            status: 202,
            job: Some(job),
            replayed,
            error: None,
            retry_after_s: None,
        }
    }

    pub fn refused(
        index: usize,
        status: u16,
        error: ErrorBody,
        retry_after_s: Option<u64>,
    ) -> Self {
        Self {
            index,
            status,
            job: None,
            replayed: false,
            error: Some(error),
            retry_after_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("json")
    }

    #[test]
    fn each_item_is_read_on_its_own() {
        let good = BatchItem::parse(&raw(
            r#"{"job":{"kind":"echo","params":{"x":1}},"idempotency_key":"k1"}"#,
        ))
        .expect("a good item");
        assert_eq!(good.job.params.get(), r#"{"x":1}"#);
        assert_eq!(good.idempotency_key.as_deref(), Some("k1"));
        for bad in [
            r#"{"job":{"kind":"echo","params":3}}"#,
            r#"{"job":{"kind":"echo","params":{}},"extra":1}"#,
            r#"{"kind":"echo","params":{}}"#,
            "[1]",
            "7",
        ] {
            let error = BatchItem::parse(&raw(bad)).expect_err(bad);
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn a_batch_holds_at_least_one_job_and_at_most_the_limit() {
        assert!(check_batch_size(0, 10).is_err());
        assert!(check_batch_size(1, 10).is_ok());
        assert!(check_batch_size(10, 10).is_ok());
        assert!(check_batch_size(11, 10).is_err());
    }

    #[test]
    fn a_result_shows_only_its_outcome() {
        let refused = BatchResult::refused(
            2,
            422,
            ErrorBody::new(ErrorCode::InvalidRequest, "no"),
            None,
        );
        let json = serde_json::to_value(&refused).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"index":2,"status":422,"error":{"code":"invalid_request","message":"no"}})
        );
    }
}
