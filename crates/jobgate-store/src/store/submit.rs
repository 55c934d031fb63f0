//! Submission: the types a submission is made of, idempotency keys, and
//! one job's submission — a batch of one: the owner's rate, `create`
//! (record and `queued` event, on the job's hash tag), then the queue entry
//! (on the queue's tag) with the owner's index and new-job notice (on the
//! owner's tag) are made by `batch.rs` for any number of jobs. A failed
//! second step fails the record, so no record claims to be queued without
//! an entry.

use std::time::Duration;

use jobgate_proto::{JobId, SubmitRequest};

use super::JobStore;
use crate::StoreError;
use crate::keys;

/// W3C trace context of a job.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
    pub trace_id: String,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: JobId,
    pub owner: String,
    pub request: SubmitRequest,
    pub queue: String,
    pub trace: TraceContext,
    /// The old API's free-form trace id; only its jobs have one, and only
    /// theirs get a `legacy_trace_id` field.
    pub legacy_trace_id: Option<String>,
}

/// How many jobs one owner may submit per window (over all gateways).
#[derive(Debug, Clone, Copy)]
pub struct SubmitRate {
    pub limit: u64,
    pub window: Duration,
}

impl SubmitRate {
    /// The window `now_ms` falls in.
    pub(super) fn window_at(&self, now_ms: u64) -> RateWindow {
        let length_s = self.window.as_secs().max(1);
        let now_s = now_ms / 1000;
        let index = now_s / length_s;
        RateWindow {
            index,
            length_s,
            retry_after_s: (index + 1) * length_s - now_s,
        }
    }
}

/// One rate window: its number (in its key's name), its length, and the
/// seconds left in it when it was asked for.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateWindow {
    pub(super) index: u64,
    pub(super) length_s: u64,
    pub(super) retry_after_s: u64,
}

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    Created,
    /// The owner is over its rate: nothing was created.
    RateLimited {
        retry_after_s: u64,
    },
}

/// What an idempotency key was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now names the caller's job.
    Claimed,
    /// The key was used before, for this job and request fingerprint.
    Existing {
        job_id: JobId,
        fingerprint: String,
        trace_id: String,
    },
}

/// The value of an idempotency key.
#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    job_id: JobId,
    fingerprint: String,
    trace_id: String,
}

impl JobStore {
    /// Creates the job record (with its `queued` event) and enqueues it,
    /// counting it against the owner's `rate` first: a batch of one
    /// ([`JobStore::submit_many`]). When enqueueing fails after the record
    /// was written, the record is failed with `enqueue_failed` so that it
    /// never claims to be queued.
    pub async fn submit(
        &self,
        job: &NewJob,
        rate: Option<SubmitRate>,
    ) -> Result<Submitted, StoreError> {
        self.submit_many(std::slice::from_ref(job), rate)
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Protocol("a submission got no answer".into())))
    }

    /// Claims `key` for `job_id` for `ttl`, or tells what it already names.
    pub async fn claim_idempotency(
        &self,
        owner: &str,
        key: &str,
        job_id: JobId,
        fingerprint: &str,
        trace_id: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut conn = self.connection();
        let record = IdempotencyRecord {
            job_id,
            fingerprint: fingerprint.to_owned(),
            trace_id: trace_id.to_owned(),
        };
        let value = serde_json::to_string(&record)
            .map_err(|e| StoreError::Protocol(format!("idempotency record: {e}")))?;
        let previous: Option<String> = redis::cmd("SET")
            .arg(keys::idempotency(owner, key))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        let Some(previous) = previous else {
            return Ok(IdempotencyClaim::Claimed);
        };
        let previous: IdempotencyRecord = serde_json::from_str(&previous)
            .map_err(|e| StoreError::Protocol(format!("idempotency record: {e}")))?;
        Ok(IdempotencyClaim::Existing {
            job_id: previous.job_id,
            fingerprint: previous.fingerprint,
            trace_id: previous.trace_id,
        })
    }

    /// Frees a key whose job could not be created, so a retry can succeed.
    pub async fn release_idempotency(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        let mut conn = self.connection();
        let _: i64 = redis::cmd("DEL")
            .arg(keys::idempotency(owner, key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
